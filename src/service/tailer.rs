//! The active instance's work: the change stream, the in-memory window,
//! flushes, finalization steps, checkpoints.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Result;
use bson::oid::ObjectId;
use bson::{Bson, RawDocumentBuf, Timestamp};
use chrono::{DateTime, Days, NaiveDate, Utc};
use mongodb::change_stream::event::{OperationType, ResumeToken};
use tracing::{error, info, warn};

use super::backend::{Backend, Changes, Watch};
use super::event::Event;
use super::options::{Counters, RunOptions};
use super::run::pause;
use super::work::Work;
use crate::batch::scan::{reject_key, Focus, Range};
use crate::core::calendar::{first_of_month, last_of_month};
use crate::core::reports::Kind;
use crate::core::schedule;
use crate::core::source::{decode_pocket, decode_transaction, owner, SourceId};
use crate::mongo::bulk;
use crate::mongo::connect;
use crate::mongo::errors::{command_code, is_history_lost};
use crate::mongo::inject;
use crate::mongo::lease::{self, Fence};
use crate::mongo::state::{Checkpoint, Claim};
use crate::mongo::{POCKETS, TRANSACTIONS};
use crate::ops::telemetry::{Recovery, WriteMix};
use crate::plan::compare::DocChange;
use crate::plan::write::Write;
use crate::service::live::{split_at_floor, Live, PocketChange};

pub(super) struct Tailer<B: Backend> {
    backend: B,
    pub(super) opts: RunOptions,
    checkpoint: Checkpoint,
    /// Proof of the lease: every write goes behind it (`None`: unfenced).
    fence: Option<Fence>,
    pub(super) stream: Option<B::Changes>,
    /// Token after the last event handled (not yet necessarily flushed).
    token: Option<ResumeToken>,
    /// Every user's inputs over the open window, and stored fingerprints.
    live: Live,
    /// What the events handled left to do.
    work: Work,
    /// Documents with a reject record ([`reject_key`]): only those need
    /// clearing when a valid version arrives.
    known_rejects: HashSet<String>,
    /// When (service clock) the stream last came back empty.
    caught_up_at: Option<DateTime<Utc>>,
    /// Server wall time of the last event read (real time).
    last_event_wall: Option<DateTime<Utc>>,
    last_event_at: Instant,
    last_save: Instant,
    next_steps: Vec<(Kind, NaiveDate, DateTime<Utc>)>,
    backoff: Duration,
    pre_images: bool,
    pub(super) counters: Counters,
    /// Checkpoints stored by this tailer (progress, for [`Failures`]).
    pub(super) saves: u64,
    /// When the stream was opened, until its first answer: an empty first
    /// answer is the aggregate's first batch, as of the opening.
    opened_at: Option<DateTime<Utc>>,
    /// Set when a stop is requested: waits between retries end early.
    stop: Arc<AtomicBool>,
}

/// The shortest time between two checkpoints while events keep coming.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The code a server older than 6.0 answers `fullDocumentBeforeChange` with
/// (`Location40415`: an unknown field of `$changeStream`).
const UNKNOWN_FIELD: i32 = 40415;

impl<B: Backend> Tailer<B> {
    pub(super) async fn start(
        backend: B,
        opts: RunOptions,
        fence: Option<Fence>,
        stop: Arc<AtomicBool>,
    ) -> Result<Tailer<B>> {
        for line in backend.init(opts.pre_images).await? {
            if line.starts_with("suggestion") {
                warn!("{line}");
            }
        }
        let mut checkpoint = backend.load_checkpoint().await?;
        let now = opts.clock.now();
        let today = opts.cal.day_of(now);
        let mut tailer = Tailer {
            backend,
            checkpoint: Checkpoint::default(),
            fence,
            stream: None,
            token: None,
            live: Live::new(opts.cal, first_of_month(today), today, Default::default()),
            work: Work::default(),
            known_rejects: HashSet::new(),
            caught_up_at: None,
            last_event_wall: None,
            last_event_at: Instant::now(),
            last_save: Instant::now(),
            next_steps: Vec::new(),
            backoff: Duration::from_millis(100),
            pre_images: opts.pre_images,
            counters: Counters::default(),
            saves: 0,
            opened_at: None,
            stop,
            opts,
        };
        if checkpoint.resume_token.is_none() && checkpoint.start_at.is_none() {
            let start_at = tailer.operation_time().await?;
            let from = today - Days::new(tailer.opts.initial_days);
            info!(from = %from, "First start: building the window from the source.");
            checkpoint.managed_from = Some(from);
            tailer.checkpoint = checkpoint.clone();
            let started = Instant::now();
            tailer.backfill_window(from).await?;
            info!(
                documents_written = tailer.counters.documents_written,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "Window built from the source."
            );
            checkpoint.start_at = Some(start_at);
            tailer.checkpoint = checkpoint;
            tailer.save().await?;
        } else {
            tailer.checkpoint = checkpoint;
        }
        if tailer.checkpoint.managed_from.is_none() {
            tailer.checkpoint.managed_from = Some(today - Days::new(tailer.opts.initial_days));
        }
        tailer.token = tailer.checkpoint.resume_token.clone();
        tailer.load_live().await?;
        inject::point("start.loaded")?;
        tailer.known_rejects = tailer.backend.load_reject_keys().await?;
        let now = tailer.opts.clock.now();
        let settle = chrono::Duration::from_std(tailer.opts.settle).unwrap_or_default();
        for (user, since) in tailer.checkpoint.pending.clone() {
            // Pending past the settle delay: its drift may have been
            // written in the window, not yet before it.
            if now - since >= settle {
                tailer.work.deep.insert(user);
            }
            tailer.mark(user, tailer.managed_from(), None);
        }
        // Memory was read after the stored documents were written, and the
        // events replayed from the checkpoint cannot always say what they
        // changed: one without a pre-image that handed a pocket to another
        // user names only the new owner, and memory already has it there.
        // So the first flush compares every user's window with what is
        // stored; a difference waits for the settle delay like any past
        // change (the API may be between two writes), then its user is
        // rescanned in full (found by tests/simulation seed 903).
        let open_from = tailer.live.open_from();
        for user in tailer.live.users() {
            tailer.mark(user, open_from, None);
            tailer.work.compare.insert(user);
        }
        tailer.plan_steps(now).await?;
        inject::point("start.planned")?;
        if let Err(e) = tailer.open_stream().await {
            // Down longer than the server's history: the stored token is gone.
            if !history_lost(&e) {
                return Err(e);
            }
            tailer.recover_history_lost(&e).await?;
        }
        info!(
            time_zone = tailer.opts.cal.name(),
            managed_from = %tailer.managed_from(),
            resumed = tailer.token.is_some(),
            "Tailing transactions and pockets."
        );
        tailer.opts.telemetry.set_tailing();
        Ok(tailer)
    }

    fn managed_from(&self) -> NaiveDate {
        self.checkpoint.managed_from.expect("set at start")
    }

    async fn operation_time(&self) -> Result<Timestamp> {
        self.backend.operation_time().await
    }

    async fn backfill_window(&mut self, from: NaiveDate) -> Result<()> {
        let now = self.opts.clock.now();
        let to = self.opts.cal.day_of(now) + Days::new(self.opts.horizon_days);
        let range = Range {
            from,
            to,
            kinds: Kind::ALL.to_vec(),
        };
        let changed = self
            .backend
            .backfill(self.opts.cal, range, now, self.fence.clone())
            .await?;
        self.counters.documents_written += changed;
        Ok(())
    }

    /// Reads the open window of every user into memory: the previous
    /// month on (whole months), or the month tally started managing.
    async fn load_live(&mut self) -> Result<()> {
        let started = Instant::now();
        let now = self.opts.clock.now();
        let today = self.opts.cal.day_of(now);
        let managed_from = self.managed_from();
        let previous_month = first_of_month(crate::core::calendar::prev_day(first_of_month(today)));
        let from = previous_month.max(first_of_month(managed_from));
        let mut live = Live::new(
            self.opts.cal,
            from,
            managed_from,
            self.backend.load_categories().await?,
        );
        let focus = Focus {
            reports_open_from: Some(self.reports_open_from(today)),
            keep_from: Some(from),
            ..Focus::default()
        };
        let range = self.window(live.open_from(), today);
        self.backend
            .scan(
                self.opts.cal,
                range,
                now,
                from,
                managed_from,
                focus,
                &mut |r| {
                    if let (Some(user), Some(kept)) = (r.user, r.kept) {
                        // Read at once, so nothing changed hands meanwhile
                        // that the stream will not replay.
                        let _ = live.insert(user, kept);
                        if live.user_count().is_multiple_of(RELEASE_EVERY_USERS) {
                            release_free_memory();
                        }
                    }
                },
            )
            .await?;
        release_free_memory();
        info!(
            from = %from,
            users = live.user_count(),
            transactions = live.transaction_count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Open window loaded into memory."
        );
        self.live = live;
        self.work.rescan.clear();
        Ok(())
    }

    /// Every kind of document from `from` to the horizon.
    fn window(&self, from: NaiveDate, today: NaiveDate) -> Range {
        Range {
            from,
            to: today + Days::new(self.opts.horizon_days),
            kinds: Kind::ALL.to_vec(),
        }
    }

    /// The first day whose reports are not final yet.
    fn reports_open_from(&self, today: NaiveDate) -> NaiveDate {
        self.checkpoint
            .reports_final_through
            .map_or(today, |d| d.succ_opt().unwrap_or(d).max(today))
    }

    async fn open_stream(&mut self) -> Result<()> {
        let watch = Watch {
            resume_after: self.token.clone(),
            start_at: self.checkpoint.start_at,
            pre_images: self.pre_images,
        };
        match self.backend.watch(watch).await {
            Ok(s) => {
                self.stream = Some(s);
                self.opened_at = Some(self.opts.clock.now());
                Ok(())
            }
            Err(e)
                if self.pre_images
                    && e.find::<mongodb::error::Error>().and_then(command_code)
                        == Some(UNKNOWN_FIELD) =>
            {
                warn!(error = %e, "Server refuses pre-images in change streams; following without them.");
                self.pre_images = false;
                Box::pin(self.open_stream()).await
            }
            Err(e) => Err(e),
        }
    }

    /// Plans the next finalization of each kind: the first missed one, or
    /// the next to come.
    async fn plan_steps(&mut self, now: DateTime<Utc>) -> Result<()> {
        self.next_steps.clear();
        for kind in Kind::ALL {
            let done = self
                .backend
                .last_finalized(kind)
                .await?
                .inspect(|(p, at)| self.opts.telemetry.schedule_last(kind, *p, *at))
                .map(|(p, _)| p);
            if let (Kind::Report, Some(done)) = (kind, done) {
                // A day recorded finalized stays final, even when the
                // checkpoint saying so was not stored before a crash: a
                // restart before midnight would otherwise write that day's
                // reports open again (found by tests/simulation.rs).
                let through = &mut self.checkpoint.reports_final_through;
                *through = Some(through.map_or(done, |t| t.max(done)));
            }
            let due = self
                .opts
                .schedule
                .due_since(&self.opts.cal, kind, done, now);
            // Missed steps run first, one after the other, once the
            // stream has delivered what was written before they were due
            // (`step`); the next is planned after each.
            let next = match due.first() {
                Some(first) => *first,
                None => schedule::next(
                    kind,
                    done.unwrap_or_else(|| {
                        self.opts.schedule.latest_due(&self.opts.cal, kind, now)
                    }),
                ),
            };
            self.next_steps.push((
                kind,
                next,
                self.opts.schedule.due_at(&self.opts.cal, kind, next),
            ));
            if let Some(&(k, p, at)) = self.next_steps.last() {
                self.opts.telemetry.schedule_next(k, p, at);
            }
        }
        Ok(())
    }

    async fn run_step(&mut self, kind: Kind, period: NaiveDate) -> Result<()> {
        let now = self.opts.clock.now();
        let claim = self
            .backend
            .claim(
                kind,
                period,
                &self.opts.owner,
                now,
                chrono::Duration::minutes(10),
                self.fence.as_ref(),
            )
            .await?;
        inject::point("finalize.claimed")?;
        if kind == Kind::Report {
            // Whoever runs it, the day's reports are final from now on.
            let through = self
                .checkpoint
                .reports_final_through
                .map_or(period, |p| p.max(period));
            self.checkpoint.reports_final_through = Some(through);
        }
        if claim == Claim::Taken {
            self.opts.telemetry.finalization_taken(kind);
            return Ok(());
        }
        self.flush().await?;
        let started = Instant::now();
        let telemetry = self.opts.telemetry.clone();
        let outcome = telemetry.finalization(kind, period);
        let mut closed_only = 0;
        let documents = if self.in_window(kind, period) {
            let (replaced, closed) = self.finalize_live(kind, period).await?;
            closed_only = closed;
            replaced + closed
        } else {
            let documents = self
                .backend
                .finalize(
                    self.opts.cal,
                    kind,
                    period,
                    now,
                    self.managed_from(),
                    self.fence.as_ref(),
                )
                .await?;
            self.opts.telemetry.written_to(kind, documents);
            documents
        };
        inject::point("finalize.written")?;
        self.backend
            .finish(
                kind,
                period,
                documents,
                self.opts.clock.now(),
                self.fence.as_ref(),
            )
            .await?;
        inject::point("finalize.recorded")?;
        self.counters.finalizations += 1;
        if kind == Kind::Monthly {
            // A month closed: the window moves on to the previous month.
            let today = self.opts.cal.day_of(self.opts.clock.now());
            let month = first_of_month(crate::core::calendar::prev_day(first_of_month(today)));
            self.live.slide(month);
        }
        outcome.done();
        info!(
            kind = kind.cli_name(),
            period = %period,
            documents,
            closed_only,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Finalized."
        );
        Ok(())
    }

    /// Whether the open window holds everything a step's documents need.
    fn in_window(&self, kind: Kind, period: NaiveDate) -> bool {
        match kind {
            Kind::Monthly => {
                period >= self.live.from() && last_of_month(period) >= self.live.open_from()
            }
            Kind::Report | Kind::Snapshot => period >= self.live.open_from(),
        }
    }

    /// A finalization step done from memory: every user's documents of
    /// the period are built and compared with the stored fingerprints.
    /// Returns the documents replaced (content changed or new) and those
    /// only marked final.
    async fn finalize_live(&mut self, kind: Kind, period: NaiveDate) -> Result<(u64, u64)> {
        let now = self.opts.clock.now();
        let today = self.opts.cal.day_of(now);
        let (from, to) = match kind {
            Kind::Monthly => (period, last_of_month(period)),
            Kind::Report | Kind::Snapshot => (period, period),
        };
        let open = self.reports_open_from(today);
        let mut writes = Vec::new();
        let mut closes = Vec::new();
        for user in self.live.users() {
            for c in self.live.compute(user, &[kind], from, to, today, open, now) {
                let target = if self.live.only_closes(&c) {
                    &mut closes
                } else {
                    &mut writes
                };
                target.push((c.user, c.period, c.write));
            }
        }
        // Documents whose content changed are replaced first (final from
        // then on); the rest are only closed, by one update of the period.
        let stats = self.write(writes).await?;
        if stats.errors + stats.conflicts > 0 {
            crate::bail!(
                "finalizing {} {}: {} writes failed and {} met a concurrent writer",
                kind.cli_name(),
                period,
                stats.errors,
                stats.conflicts
            );
        }
        let replaced = stats.changed();
        let mut closed = 0;
        for period in closes.iter().map(|(_, p, _)| *p).collect::<BTreeSet<_>>() {
            closed += self
                .backend
                .mark_final(kind, period, now, self.fence.as_ref())
                .await?;
        }
        self.live.record(&closes);
        self.opts.telemetry.written_to(kind, closed);
        self.counters.documents_written += closed;
        Ok((replaced, closed))
    }

    /// Executes writes and keeps the in-memory fingerprints in step. Users
    /// whose writes did not all land (an error, or a concurrent writer's
    /// revision) are rescanned from the source on the next flush.
    async fn write(
        &mut self,
        writes: Vec<(ObjectId, NaiveDate, Write)>,
    ) -> Result<bulk::WriteStats> {
        if writes.is_empty() {
            return Ok(bulk::WriteStats::default());
        }
        self.live.record(&writes);
        let users: HashSet<ObjectId> = writes.iter().map(|(u, _, _)| *u).collect();
        let writes: Vec<Write> = writes.into_iter().map(|(_, _, w)| w).collect();
        let mix = WriteMix::of(&writes);
        let result = self.backend.execute(writes, self.fence.as_ref()).await;
        if let Ok(stats) = &result {
            self.opts.telemetry.written(&mix, stats);
        }
        let clean = matches!(&result, Ok(s) if s.errors == 0 && s.conflicts == 0);
        if !clean {
            if let Ok(stats) = &result {
                warn!(
                    conflicts = stats.conflicts,
                    errors = stats.errors,
                    users = users.len(),
                    "Writes met another writer or failed; their users are rescanned from the source."
                );
            }
            let from = self.live.open_from();
            for user in users {
                self.mark(user, from, None);
                self.work.rescan.insert(user);
            }
        }
        let stats = result?;
        self.counters.documents_written += stats.changed();
        Ok(stats)
    }

    /// One turn: due timers, a batch of events, a flush when due.
    pub(super) async fn step(&mut self) -> Result<()> {
        let now = self.opts.clock.now();
        for i in 0..self.next_steps.len() {
            let (kind, period, at) = self.next_steps[i];
            if now >= at && self.stream_reached(at) {
                self.run_step(kind, period).await?;
                let next = schedule::next(kind, period);
                self.next_steps[i] = (
                    kind,
                    next,
                    self.opts.schedule.due_at(&self.opts.cal, kind, next),
                );
                let (_, _, due) = self.next_steps[i];
                self.opts.telemetry.schedule_next(kind, next, due);
            }
        }
        for _ in 0..1000 {
            if self.stream.is_none() {
                self.reconnect().await?;
                break;
            }
            let asked_at = self.opts.clock.now();
            let settled = self.settled();
            let Some(stream) = self.stream.as_mut() else {
                break;
            };
            match stream.next_if_any().await {
                Ok(Some(event)) => {
                    self.token = stream.resume_token();
                    self.opened_at = None;
                    self.handle(event);
                }
                Ok(None) => {
                    // The server had nothing more: everything written
                    // before the question was asked (for the first answer,
                    // before the stream was opened) has been delivered.
                    self.caught_up_at = Some(self.opened_at.take().unwrap_or(asked_at));
                    if settled {
                        self.token = stream.resume_token().or(self.token.take());
                        self.opts.telemetry.caught_up();
                    }
                    self.backoff = Duration::from_millis(100);
                    break;
                }
                Err(e) if history_lost(&e) => {
                    self.recover_history_lost(&e).await?;
                    break;
                }
                Err(e) => {
                    warn!(error = %connect::redact_uri(&e.to_string()), "Change stream failed; reconnecting.");
                    self.stream = None;
                    break;
                }
            }
            if self.flush_due() {
                break;
            }
        }
        if self.flush_due() {
            self.flush().await?;
        }
        if self.settled() {
            // Events that queued nothing to write have no latency.
            self.work.walls.clear();
        }
        if self.settled() && self.last_save.elapsed() >= CHECKPOINT_EVERY {
            self.save().await?;
        }
        self.recheck_pending();
        Ok(())
    }

    /// The floor of a user whose anchors moved, when its days before the
    /// floor can wait: the flush then computes the user from its floor, not
    /// from the window's start.
    ///
    /// The API writes a transaction, then its pocket's balance. A flush
    /// between the two finds the anchors moved, and every day before the
    /// floor different: changes [`Tailer::hold_past_changes`] would hold
    /// (the floor makes them past), and the balance write a moment later
    /// moves the anchors back, which recomputed the whole window a second
    /// time. Two whole windows for a single call, the most expensive
    /// flushes under load (BENCHMARKS.md, issue 13 (3)). Instead the days
    /// before the floor wait. The anchors of the last computation stay
    /// noted, and [`Work::redo`] keeps the first day computed with the moved
    /// ones: the next computation covers those days again, and from the
    /// window's start if the anchors are still moved then. A user whose
    /// floor expires while still in `redo` is queued again
    /// ([`Tailer::recheck_pending`]); if its anchors are still moved, it is
    /// pending since its past first waited, as if held then, so a drift the
    /// balance write never cancels is written when it was before.
    ///
    /// Only for a user computed since it was loaded, and not awaiting a
    /// start's comparison: those compare the whole window.
    fn past_waits(&self, user: &ObjectId, at: Instant) -> Option<NaiveDate> {
        let floor = self.work.floor(user, self.opts.settle, at)?;
        (floor > self.live.open_from()
            && self.live.was_computed(user)
            && !self.work.compare.contains(user))
        .then_some(floor)
    }

    fn flush_due(&self) -> bool {
        !self.settled()
            && (self.last_event_at.elapsed() >= self.opts.quiet
                || self
                    .work
                    .first_dirty_at
                    .is_some_and(|t| t.elapsed() >= self.opts.max_delay))
    }

    fn recheck_pending(&mut self) {
        let now = self.opts.clock.now();
        let settle = chrono::Duration::from_std(self.opts.settle).unwrap_or_default();
        let due: Vec<ObjectId> = self
            .checkpoint
            .pending
            .iter()
            .filter(|(_, since)| now - *since >= settle)
            .map(|(u, _)| *u)
            .collect();
        let from = self.managed_from();
        for user in due {
            if self.work.deep.insert(user) || !self.work.dirty.contains_key(&user) {
                self.mark(user, from, None);
                self.work.rescan.insert(user);
            }
        }
        // Users whose past waited for a balance write (`past_waits`) that
        // did not come within their floor: computed again, from the
        // window's start if their anchors are still moved. Then their past
        // differs since it first waited: pending since then, as if held
        // then, so that its drift is written within the bound of contract
        // §4.4, not a settle delay later.
        let at = Instant::now();
        let open = self.live.open_from();
        let due: Vec<(ObjectId, (NaiveDate, DateTime<Utc>))> = (self.work.redo.iter())
            .filter(|(u, _)| {
                !self.work.dirty.contains_key(u)
                    && self.work.floor(u, self.opts.settle, at).is_none()
            })
            .map(|(u, r)| (*u, *r))
            .collect();
        for (user, (day, since)) in due {
            let day = if self.live.anchors_moved(&user) {
                if !self.checkpoint.pending.iter().any(|(u, _)| *u == user) {
                    self.checkpoint.pending.push((user, since));
                }
                open
            } else {
                day
            };
            self.mark(user, day, None);
        }
    }

    async fn reconnect(&mut self) -> Result<()> {
        pause(self.backoff, &self.stop).await;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(10));
        self.counters.reconnects += 1;
        match self.open_stream().await {
            Ok(()) => {
                self.opts.telemetry.recovery(Recovery::Reconnect);
                info!(
                    reconnects = self.counters.reconnects,
                    "Change stream reopened."
                );
                Ok(())
            }
            Err(e) if history_lost(&e) => self.recover_history_lost(&e).await,
            // Counted and retried by the caller (`lead`): in place when
            // the server is away, from the stored state otherwise.
            Err(e) => Err(e.context("reopening the change stream")),
        }
    }

    /// The stored token is older than the server's history: recompute the
    /// window from the source, then stream from a fresh operation time.
    async fn recover_history_lost(&mut self, e: &crate::error::Error) -> Result<()> {
        self.counters.history_lost += 1;
        self.opts.telemetry.recovery(Recovery::HistoryLost);
        error!(error = %e, recoveries = self.counters.history_lost, "Change stream history lost: recomputing the window from the source.");
        // Verdicts read before the loss may be stale (a correction among
        // the lost events): the recompute and the revalidation below say
        // what holds now (found by tests/simulation seed 764).
        self.work.verdicts.clear();
        let start_at = self.operation_time().await?;
        self.backfill_window(self.managed_from()).await?;
        // The lost events may have corrected or deleted documents with a
        // reject record, outside the window too.
        self.backend.revalidate_rejects(self.fence.as_ref()).await?;
        inject::point("recover.backfilled")?;
        // The store now holds the window recomputed from the source; memory
        // must too, or later flushes would build from stale ledgers.
        self.load_live().await?;
        self.known_rejects = self.backend.load_reject_keys().await?;
        inject::point("recover.loaded")?;
        self.work.dirty.clear();
        self.work.redo.clear();
        self.work.locate.clear();
        self.work.first_dirty_at = None;
        self.token = None;
        self.checkpoint.resume_token = None;
        self.checkpoint.start_at = Some(start_at);
        self.save().await?;
        inject::point("recover.saved")?;
        self.open_stream().await?;
        info!("Recovered from lost history; streaming again.");
        Ok(())
    }

    /// Counts an event whose earliest day belongs to a period of a kind
    /// already finalized (it restates final documents).
    fn count_late(&self, day: Option<NaiveDate>) {
        let Some(day) = day else { return };
        for &(kind, next, _) in &self.next_steps {
            let period = match kind {
                Kind::Monthly => first_of_month(day),
                Kind::Report | Kind::Snapshot => day,
            };
            if period < next {
                self.opts.telemetry.late_event(kind);
            }
        }
    }

    /// Queues `user` from `day`: rebuilt from memory when the window
    /// holds the user and the day, rescanned from the source otherwise.
    fn mark(&mut self, user: ObjectId, day: NaiveDate, tx_day: Option<NaiveDate>) {
        // Queued for a reason of its own now, not just a start's comparison.
        self.work.compare.remove(&user);
        let rescan = day < self.live.open_from() || !self.live.holds(&user);
        self.work
            .mark(user, day, tx_day, rescan, self.opts.settle, Instant::now());
    }

    fn handle(&mut self, raw: RawDocumentBuf) {
        self.counters.events += 1;
        self.last_event_at = Instant::now();
        let event = match Event::from_raw(&raw) {
            Ok(e) => e,
            Err(e) => {
                // Not a change event tally can read: nothing to apply, but
                // never silent. (The stream's token still moves past it.)
                self.opts.telemetry.unreadable_event();
                let id = raw.get("_id").ok().flatten().map(|v| format!("{v:?}"));
                error!(error = %format!("{e:#}"), event = id.as_deref().unwrap_or("?"), "Unreadable change event skipped.");
                return;
            }
        };
        if let Some(wall) = event.wall_millis {
            self.checkpoint.last_event_at = DateTime::from_timestamp_millis(wall);
            self.last_event_wall = self.checkpoint.last_event_at;
            self.work.walls.push(wall);
        }
        let coll = event.collection;
        self.opts
            .telemetry
            .change_event(coll, &event.operation_type, event.wall_millis);
        match event.operation_type {
            OperationType::Insert
            | OperationType::Update
            | OperationType::Replace
            | OperationType::Delete => {}
            OperationType::Invalidate
            | OperationType::Drop
            | OperationType::Rename
            | OperationType::DropDatabase => {
                error!(operation = ?event.operation_type, collection = %coll, "Source collection dropped or renamed: refreshing the window and restarting the stream.");
                self.work.full_refresh = true;
                self.work.first_dirty_at.get_or_insert_with(Instant::now);
                if event.operation_type == OperationType::Invalidate {
                    self.stream = None;
                    self.token = None;
                    self.checkpoint.resume_token = None;
                    self.checkpoint.start_at = None;
                }
                return;
            }
            _ => return,
        }
        let id = event.id;
        let is_delete = event.operation_type == OperationType::Delete;
        let has_old = event.full_document_before_change.is_some();
        let cal = self.opts.cal;
        match coll {
            TRANSACTIONS => {
                let mut new_user = None;
                let mut new_tx = None;
                if let Some(doc) = &event.full_document {
                    match decode_transaction(doc) {
                        Ok(tx) => {
                            new_user = Some(tx.user_id);
                            self.work.verdicts.push((TRANSACTIONS, tx.id.clone(), None));
                            new_tx = Some(tx);
                        }
                        Err(r) => {
                            self.counters.rejects += 1;
                            self.opts
                                .telemetry
                                .reject(TRANSACTIONS, &SourceId::from_bson(&id), r);
                            self.work.verdicts.push((
                                TRANSACTIONS,
                                SourceId::from_bson(&id),
                                Some(r),
                            ));
                            new_user = owner(doc);
                        }
                    }
                }
                let (touched, known) = self
                    .live
                    .set_transaction(&SourceId::from_bson(&id), new_tx.as_ref());
                // The old version, from the pre-image (decoded once).
                let old = event
                    .full_document_before_change
                    .as_ref()
                    .and_then(|d| decode_transaction(d).ok())
                    .map(|tx| (tx.user_id, cal.day_of_millis(tx.date)));
                let earliest = touched.iter().map(|(_, d)| *d);
                self.count_late(earliest.chain(old.map(|(_, d)| d)).min());
                for (user, day) in touched {
                    self.mark(user, day, Some(day));
                }
                if !known {
                    // Not in memory: before the window, of a user the
                    // window does not hold, invalid, or new. An old version
                    // recorded invalid counted nowhere (contract §1.4): there
                    // is nothing to locate.
                    let recorded = || {
                        let key = reject_key(TRANSACTIONS, &SourceId::from_bson(&id));
                        self.known_rejects.contains(&key)
                    };
                    if let Some((user, day)) = old {
                        self.mark(user, day, Some(day));
                    } else if !has_old
                        && event.operation_type != OperationType::Insert
                        && !recorded()
                    {
                        self.work.locate.push((id.clone(), new_user));
                    }
                }
                if is_delete {
                    self.work
                        .verdicts
                        .push((TRANSACTIONS, SourceId::from_bson(&id), None));
                }
            }
            POCKETS => {
                let decoded = event.full_document.as_ref().map(decode_pocket);
                let old = event
                    .full_document_before_change
                    .as_ref()
                    .and_then(|d| decode_pocket(d).ok());
                match &decoded {
                    Some(Ok(p)) => match p.reject_reason() {
                        Some(r) => {
                            self.counters.rejects += 1;
                            self.opts.telemetry.reject(POCKETS, &SourceId::Oid(p.id), r);
                            self.work
                                .verdicts
                                .push((POCKETS, SourceId::Oid(p.id), Some(r)));
                        }
                        None => self
                            .work
                            .verdicts
                            .push((POCKETS, SourceId::Oid(p.id), None)),
                    },
                    Some(Err(r)) => {
                        self.counters.rejects += 1;
                        self.opts
                            .telemetry
                            .reject(POCKETS, &SourceId::from_bson(&id), *r);
                        self.work
                            .verdicts
                            .push((POCKETS, SourceId::from_bson(&id), Some(*r)))
                    }
                    None => self
                        .work
                        .verdicts
                        .push((POCKETS, SourceId::from_bson(&id), None)),
                }
                let new = decoded.and_then(Result::ok);
                // Read before the window takes the new version.
                let balance_only = new.as_ref().is_some_and(|n| self.live.balance_only(n));
                let (mut users, known) = match id.as_object_id() {
                    Some(pocket) => self.live.set_pocket(pocket, new.as_ref()),
                    None => (Vec::new(), false),
                };
                users.extend(old.iter().chain(&new).filter_map(|p| p.user_id));
                users.sort_by_key(|u| u.bytes());
                users.dedup();
                if users.is_empty()
                    || (!known && !has_old && event.operation_type != OperationType::Insert)
                {
                    // Without the old version the previous owner is unknown.
                    self.work.locate.push((id, users.first().copied()));
                }
                let change = PocketChange {
                    insert: event.operation_type == OperationType::Insert,
                    new: new.as_ref(),
                    old: old.as_ref(),
                    balance_only,
                };
                let today = cal.day_of(self.opts.clock.now());
                let (first, floor) =
                    change.days(&cal, self.managed_from(), self.live.open_from(), today);
                for user in users {
                    self.mark(user, first, floor);
                }
            }
            _ => {}
        }
    }

    /// Finds the users of documents whose old version the event lacked.
    async fn resolve_locations(&mut self) -> Result<()> {
        if self.work.locate.is_empty() {
            return Ok(());
        }
        let ids: Vec<Bson> = self.work.locate.iter().map(|(id, _)| id.clone()).collect();
        // Days a transaction counted on (old day: a floor, contract §4.4), and
        // owners of a pocket. A pocket listed on a day says nothing about
        // which days its change touches: its owners are dirty, no floor.
        let located = self.backend.locate(ids).await?;
        let (found, owners) = (located.transactions, located.pockets);
        let from = self.managed_from();
        for (id, known_user) in std::mem::take(&mut self.work.locate) {
            let key = id.to_string();
            match (found.get(&key), owners.get(&key)) {
                (Some(places), _) => {
                    for (user, day) in places.clone() {
                        self.mark(user, day.min(from), Some(day));
                    }
                }
                (None, Some(users)) => {
                    for user in users.clone() {
                        self.mark(user, from, None);
                    }
                }
                (None, None) => match known_user {
                    Some(user) => self.mark(user, from, None),
                    // Listed in no report and held by no user of the window:
                    // dated before the managed days, it may still count in
                    // the year-to-date sums of managed documents, whose user
                    // nothing here names (tests/faults.rs, old hard deletes).
                    None => {
                        self.counters.unlocated += 1;
                        warn!(id = %id, "A deleted document could not be located without pre-images; refreshing the window.");
                        self.work.full_refresh = true;
                    }
                },
            }
        }
        Ok(())
    }

    /// Recomputes the dirty users and writes what differs. On failure the
    /// work stays queued (the writes are recomputations: redoing them is
    /// harmless).
    async fn flush(&mut self) -> Result<()> {
        // Located users join `dirty` (or set `full_refresh`) first, so that
        // a failure below restores them too; `locate` keeps its entries
        // until they are resolved.
        self.resolve_locations().await?;
        inject::point("flush.located")?;
        let dirty = self.work.dirty.clone();
        let full_refresh = self.work.full_refresh;
        let started = Instant::now();
        let result = self.flush_dirty().await;
        self.opts.telemetry.flushed(started.elapsed());
        match &result {
            Ok(()) => {
                let walls = std::mem::take(&mut self.work.walls);
                self.opts.telemetry.written_after(&walls);
            }
            Err(_) => self.work.restore(dirty, full_refresh, Instant::now()),
        }
        result
    }

    async fn flush_dirty(&mut self) -> Result<()> {
        let now = self.opts.clock.now();
        let today = self.opts.cal.day_of(now);
        let managed_from = self.managed_from();
        if self.work.full_refresh {
            self.counters.full_refreshes += 1;
            self.opts.telemetry.recovery(Recovery::FullRefresh);
            self.work.full_refresh = false;
            self.backfill_window(managed_from).await?;
            self.backend.revalidate_rejects(self.fence.as_ref()).await?;
            self.load_live().await?;
            // The backfill records and clears rejects itself.
            self.known_rejects = self.backend.load_reject_keys().await?;
            self.work.dirty.clear();
            self.work.redo.clear();
        }
        let reports_open_from = self.reports_open_from(today);
        let to = today + Days::new(self.opts.horizon_days);
        // Users with settled drift are rescanned from their first stored
        // document (or the managed start, if earlier): every document the
        // drift changes, however old.
        let deep: HashSet<ObjectId> = self
            .work
            .deep
            .iter()
            .filter(|u| self.work.dirty.contains_key(u))
            .copied()
            .collect();
        if !deep.is_empty() {
            let users: Vec<ObjectId> = deep.iter().copied().collect();
            let mut first = HashMap::new();
            for chunk in users.chunks(500) {
                first.extend(self.backend.first_stored_days(chunk).await?);
            }
            for user in &deep {
                let from = first
                    .get(user)
                    .map_or(managed_from, |d| (*d).min(managed_from));
                if let Some(day) = self.work.dirty.get_mut(user) {
                    *day = (*day).min(from);
                }
                self.work.rescan.insert(*user);
            }
        }
        // Users the window holds are rebuilt from memory; the others are
        // rescanned from the source, which also reloads them into memory.
        let mut per_user: Vec<(ObjectId, Vec<DocChange>)> = Vec::new();
        let mut rescan: BTreeMap<NaiveDate, Vec<ObjectId>> = BTreeMap::new();
        // Users whose whole window is recomputed now.
        let mut from_open: HashSet<ObjectId> = HashSet::new();
        // Users whose days before their floor are left for later.
        let mut later: HashSet<ObjectId> = HashSet::new();
        let open = self.live.open_from();
        let at = Instant::now();
        for (user, day) in std::mem::take(&mut self.work.dirty) {
            if self.work.rescan.contains(&user) {
                rescan.entry(day).or_default().push(user);
                from_open.insert(user);
            } else {
                let day = self.work.redo.get(&user).map_or(day, |r| day.min(r.0));
                // Anchors that moved since the last computation moved every
                // closing balance before the first day marked.
                let day = if self.live.anchors_moved(&user) {
                    match self.past_waits(&user, at) {
                        Some(floor) => {
                            later.insert(user);
                            let day = day.min(floor);
                            let redo = self.work.redo.entry(user).or_insert((day, now));
                            redo.0 = day;
                            day
                        }
                        None => day.min(open),
                    }
                } else {
                    day
                };
                if day <= open {
                    from_open.insert(user);
                }
                let changes =
                    self.live
                        .compute(user, &Kind::ALL, day, to, today, reports_open_from, now);
                per_user.push((user, changes));
            }
        }
        let rescanned: Vec<ObjectId> = rescan.values().flatten().copied().collect();
        let mut displaced: Vec<ObjectId> = Vec::new();
        self.counters.users_rescanned += rescanned.len() as u64;
        self.counters.users_from_memory += per_user.len() as u64;
        for (from, users) in rescan {
            for chunk in users.chunks(500) {
                // The month of `from` is rebuilt whole, and at least the
                // window, so that the user is reloaded into memory; the year
                // before comes from the final documents of the day before.
                let first = from.min(self.live.open_from());
                let range = self.window(first, today);
                let since = first_of_month(from).min(self.live.from());
                let focus = Focus {
                    users: Some(chunk.to_vec()),
                    reports_open_from: Some(reports_open_from),
                    ytd_baselines: None,
                    keep_from: Some(self.live.from()),
                };
                let live = &mut self.live;
                let per_user = &mut per_user;
                let displaced = &mut displaced;
                let rejects = self
                    .backend
                    .scan(
                        self.opts.cal,
                        range,
                        now,
                        since,
                        managed_from,
                        focus,
                        &mut |r| {
                            if let Some(user) = r.user {
                                if let Some(kept) = r.kept {
                                    displaced.extend(live.insert(user, kept));
                                }
                                per_user.push((user, r.changes));
                            }
                        },
                    )
                    .await?;
                self.work
                    .verdicts
                    .extend(rejects.into_iter().map(|(c, id, r)| (c, id, Some(r))));
            }
        }
        // Users queued only by a start's comparison: nothing of theirs
        // changed, so a clean comparison leaves them as they were.
        // (A set of the users computed: a start queues every user of the
        // window at once, and a walk of `per_user` for each was quadratic.)
        let computed: HashSet<ObjectId> = per_user.iter().map(|(u, _)| *u).collect();
        let compared: HashSet<ObjectId> = self
            .work
            .compare
            .iter()
            .filter(|u| self.work.dirty.contains_key(u) || computed.contains(u))
            .copied()
            .collect();
        self.work.compare.retain(|u| !compared.contains(u));
        for (user, _) in per_user.iter().filter(|(u, _)| !later.contains(u)) {
            self.live.note_computed(user);
        }
        let done: Vec<ObjectId> = (per_user.iter().map(|(u, _)| *u))
            .chain(rescanned.iter().copied())
            .filter(|u| !later.contains(u))
            .collect();
        let writes = self.hold_past_changes(per_user, now, &deep, &compared, &from_open, &later);
        inject::point("flush.computed")?;
        // Their memory was read from the source just now. Cleared before
        // the writes, not after: a write that meets another writer queues
        // its user's rescan again (`write`), and clearing that would leave
        // memory holding what never landed (found on a second read).
        for user in &rescanned {
            self.work.rescan.remove(user);
        }
        self.write(writes).await?;
        for user in &done {
            self.work.redo.remove(user);
        }
        inject::point("flush.written")?;
        // Users a rescan took a transaction or pocket from (it changed
        // hands): every day it counted on may have moved; the next flush
        // rescans them.
        for user in displaced {
            self.mark(user, managed_from, None);
            self.work.rescan.insert(user);
        }
        for user in &deep {
            self.work.deep.remove(user);
        }
        self.counters.flushes += 1;
        self.settle_rejects(now).await?;
        inject::point("flush.rejects")?;
        if self.work.dirty.is_empty() {
            self.work.first_dirty_at = None;
        }
        // At most one checkpoint per CHECKPOINT_EVERY under load (`step`
        // saves the rest once settled): a later one only replays more
        // events after a crash, and replays recompute the same content.
        if self.settled() && self.last_save.elapsed() >= CHECKPOINT_EVERY {
            self.save().await?;
        }
        Ok(())
    }

    /// Records the source documents last seen invalid, and removes the
    /// records of those last seen valid or deleted (only those that have
    /// one: most valid documents never had a record).
    async fn settle_rejects(&mut self, now: DateTime<Utc>) -> Result<()> {
        // The last verdict of each document. Keyed by the id, not by its
        // `reject_key` text: most documents are valid and have no record,
        // and need no key made (BENCHMARKS.md (3), fifth update).
        let mut last: HashMap<(&'static str, &SourceId), Option<_>> = HashMap::new();
        for (coll, id, verdict) in &self.work.verdicts {
            last.insert((*coll, id), *verdict);
        }
        let recorded = |coll: &str, id: &SourceId| {
            !self.known_rejects.is_empty() && self.known_rejects.contains(&reject_key(coll, id))
        };
        let mut rejects = Vec::new();
        let mut corrected = Vec::new();
        for (&(coll, id), verdict) in &last {
            match verdict {
                Some(reason) => rejects.push((coll, id.clone(), *reason)),
                None if recorded(coll, id) => corrected.push((coll, id.clone())),
                None => {}
            }
        }
        self.backend
            .record_rejects(&rejects, now, self.fence.as_ref())
            .await?;
        inject::point("rejects.recorded")?;
        self.backend
            .clear_rejects(&corrected, self.fence.as_ref())
            .await?;
        for ((coll, id), verdict) in last {
            match verdict {
                Some(_) => {
                    self.known_rejects.insert(reject_key(coll, id));
                }
                None if !self.known_rejects.is_empty() => {
                    self.known_rejects.remove(&reject_key(coll, id));
                }
                None => {}
            }
        }
        self.work.verdicts.clear();
        Ok(())
    }

    /// The writes to do now: changes before the first day a user's recent
    /// transaction events touched are past (contract §4.4) and are held until
    /// they have persisted for the settle delay, then written as drift.
    ///
    /// A user recomputed from a day after the start of the in-memory window
    /// had the days before it left unchecked, yet a transaction change moves
    /// every earlier closing balance until its balance write lands (and for
    /// good if it never does). Such a user stays (or becomes) pending, so
    /// that [`Tailer::recheck_pending`] recomputes the whole window after
    /// the settle delay; only a recomputation of the whole window clears it.
    ///
    /// Drift written from a recomputation that did not reach back to the
    /// user's first stored document (`deep`: those that did) leaves the user
    /// pending and queues a focused rescan of its earlier documents.
    ///
    /// Users whose past was left for later (`later`, [`Tailer::past_waits`])
    /// keep their pending state: their days before the floor were not
    /// computed, and [`Work::redo`] brings them back.
    fn hold_past_changes(
        &mut self,
        per_user: Vec<(ObjectId, Vec<DocChange>)>,
        now: DateTime<Utc>,
        deep: &HashSet<ObjectId>,
        compared: &HashSet<ObjectId>,
        from_open: &HashSet<ObjectId>,
        later: &HashSet<ObjectId>,
    ) -> Vec<(ObjectId, NaiveDate, Write)> {
        let managed_from = self.managed_from();
        let settle = chrono::Duration::from_std(self.opts.settle).unwrap_or_default();
        let mut pending: HashMap<ObjectId, DateTime<Utc>> =
            self.checkpoint.pending.iter().copied().collect();
        let mut writes = Vec::new();
        for (user, changes) in per_user {
            // Only a recomputation from the user's first stored document
            // saw every document a balance change can reach.
            let whole = deep.contains(&user);
            let floor = self.work.floor(&user, self.opts.settle, Instant::now());
            let (now_due, held) = split_at_floor(changes, floor, managed_from);
            writes.extend(now_due.into_iter().map(|c| (c.user, c.period, c.write)));
            if held.is_empty() {
                if later.contains(&user) {
                    // Its past was not computed: nothing is known of it
                    // (`past_waits`), so its pending state stays as it was.
                } else if whole {
                    pending.remove(&user);
                    self.live.note_settled(&user);
                } else if compared.contains(&user) {
                    // A start's comparison: as it was.
                } else if !self.live.anchors_settled(&user) {
                    // Documents before the window, or days before the first
                    // one recomputed, may have moved: recheck them.
                    pending.entry(user).or_insert(now);
                } else if from_open.contains(&user) {
                    // The whole window agrees, and the anchors are those of
                    // the last consistent state: nothing earlier moved.
                    pending.remove(&user);
                }
                continue;
            }
            match pending.get(&user) {
                // Persisted for the settle delay, and no transaction of the
                // user is between its two writes now (its intermediate state
                // would be written as drift and restated back a moment later).
                Some(since) if now - *since >= settle && floor.is_none() => {
                    self.counters.drift_applied += 1;
                    self.opts.telemetry.drift_applied();
                    info!(user = %user.to_hex(), documents = held.len(), "Balance drift settled; restating past documents.");
                    writes.extend(held.into_iter().map(|c| (c.user, c.period, c.write)));
                    if whole {
                        pending.remove(&user);
                        self.live.note_settled(&user);
                    }
                }
                Some(_) => {}
                None => {
                    pending.insert(user, now);
                }
            }
        }
        self.checkpoint.pending = pending.into_iter().collect();
        writes
    }

    /// [`Work::settled`]: only then may the checkpoint move past the
    /// events handled.
    fn settled(&self) -> bool {
        self.work.settled()
    }

    /// Whether the stream has delivered everything written before `at`:
    /// it came back empty when asked at or after `at`, or delivered an
    /// event the server wrote at or after it.
    fn stream_reached(&self, at: DateTime<Utc>) -> bool {
        self.caught_up_at.is_some_and(|t| t >= at)
            || self
                .last_event_wall
                .is_some_and(|w| w >= self.opts.clock.to_real(at))
    }

    /// Saves the checkpoint; its resume token moves to the last event
    /// handled only when [`Tailer::settled`].
    async fn save(&mut self) -> Result<()> {
        inject::point("checkpoint.before")?;
        if self.settled() {
            if let Some(t) = &self.token {
                self.checkpoint.resume_token = Some(t.clone());
            }
        }
        self.backend
            .save_checkpoint(&self.checkpoint, self.opts.clock.now(), self.fence.as_ref())
            .await?;
        inject::point("checkpoint.saved")?;
        self.opts.telemetry.checkpoint_saved();
        self.saves += 1;
        self.last_save = Instant::now();
        Ok(())
    }
}

impl<B: Backend> Tailer<B> {
    /// The last flush and checkpoint of a stop, within [`SHUTDOWN_WRITES`].
    /// A server that is away now loses nothing: the events after the
    /// stored checkpoint replay on the next start and recompute the same
    /// content.
    pub(super) async fn finish(mut self) -> Result<Counters> {
        let last = async {
            self.flush().await?;
            self.save().await
        };
        match tokio::time::timeout(SHUTDOWN_WRITES, last).await {
            Ok(Ok(())) => info!(
                events = self.counters.events,
                documents = self.counters.documents_written,
                users_from_memory = self.counters.users_from_memory,
                users_rescanned = self.counters.users_rescanned,
                full_refreshes = self.counters.full_refreshes,
                unlocated = self.counters.unlocated,
                "Stopped cleanly."
            ),
            Ok(Err(e)) if lease::is_lost(&e) => return Err(e),
            outcome => {
                let error = match outcome {
                    Ok(Err(e)) => connect::redact_uri(&format!("{e:#}")),
                    _ => format!("no answer within {} s", SHUTDOWN_WRITES.as_secs()),
                };
                warn!(%error, "Stopped without the last checkpoint; the events since the stored checkpoint replay on the next start.");
            }
        }
        Ok(self.counters)
    }
}

/// How long a stop waits for its last flush and checkpoint (the whole stop
/// must fit in 10 s, the server selection timeout is 5 s).
const SHUTDOWN_WRITES: Duration = Duration::from_secs(6);

/// Whether `e` says the stream's history no longer holds its start.
fn history_lost(e: &crate::error::Error) -> bool {
    e.find::<mongodb::error::Error>()
        .is_some_and(is_history_lost)
}

/// Users loaded between two [`release_free_memory`] calls of a load.
const RELEASE_EVERY_USERS: usize = 1_000;

/// Hands the pages of memory freed so far back to the system. A load
/// frees as much as it keeps (the documents it reads, each user's scan
/// result), in between what it keeps, and glibc's malloc holds those pages
/// until something reuses them: the peak RSS of a load grew by more per
/// user than the window holds (BENCHMARKS.md, issue 13 (4)). `malloc_trim`
/// returns every whole free page of every arena (milliseconds per call).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks malloc's own free lists under their
    // locks; it may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
