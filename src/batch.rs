//! `backfill` and `reconcile`: the scan of [`crate::scan`] put to work.
//!
//! Backfill writes what differs (idempotent: a second run over unchanged
//! data writes nothing). Reconcile reports what differs, and with `repair`
//! writes exactly those documents. Writes go to a writer task through a
//! bounded channel, so reading the source and writing the output overlap
//! while memory stays bounded.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use bson::oid::ObjectId;
use chrono::{DateTime, Utc};
use mongodb::Database;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::calendar::Calendar;
use crate::lease::Fence;
use crate::progress::Progress;
use crate::reports::Kind;
use crate::scan::{DocChange, Drift, Range, Scanner, Scope};
use crate::source::RejectReason;
use crate::store::{self, Prepared, Write, WriteStats};

/// Writes flushed per bulk round trip.
const FLUSH_AT: usize = 1000;

/// What a backfill did.
#[derive(Debug, Default)]
pub struct BackfillSummary {
    pub users: u64,
    pub transactions_read: u64,
    pub documents: u64,
    pub writes: WriteStats,
    pub rejects: BTreeMap<RejectReason, u64>,
    pub elapsed: Duration,
}

/// Computes every document of `range` from the source and writes the ones
/// that differ from what is stored.
pub async fn backfill(
    db: &Database,
    cal: Calendar,
    range: Range,
    now: DateTime<Utc>,
    show_progress: bool,
) -> Result<BackfillSummary> {
    backfill_fenced(db, cal, range, now, show_progress, None).await
}

/// [`backfill`] whose output writes go behind the lease `fence` (the active
/// instance of `tally run`): see [`store::execute`].
pub async fn backfill_fenced(
    db: &Database,
    cal: Calendar,
    range: Range,
    now: DateTime<Utc>,
    show_progress: bool,
    fence: Option<Fence>,
) -> Result<BackfillSummary> {
    let started = Instant::now();
    let days = (range.to - range.from).num_days() as u64 + 1;
    let mut scanner = Scanner::open(db, cal, range, now, Scope::Dependencies).await?;
    let mut progress = Progress::new("backfill", days, show_progress);
    let (writer, sender) = spawn_writer(db.clone(), fence);
    let mut summary = BackfillSummary::default();
    let mut buffer = Vec::with_capacity(FLUSH_AT);
    while let Some(user) = scanner.next_user().await? {
        summary.documents += user.documents as u64;
        buffer.extend(user.changes.into_iter().map(|c| c.write));
        if buffer.len() >= FLUSH_AT {
            send(&sender, std::mem::take(&mut buffer)).await?;
        }
        if scanner.rejects.len() >= FLUSH_AT {
            scanner.flush_rejects(db).await?;
        }
        progress.update(scanner.users_done, scanner.users_with_pockets() as u64);
    }
    send(&sender, buffer).await?;
    drop(sender);
    summary.writes = writer.await??;
    scanner.scan_undated(db).await?;
    scanner.flush_rejects(db).await?;
    progress.finish();
    summary.users = scanner.users_done;
    summary.transactions_read = scanner.transactions_read;
    summary.rejects = scanner.reject_counts.clone();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// The writer task: sends bulk commands the scanning side has already
/// encoded ([`store::prepare`]), so encoding overlaps the server's work.
fn spawn_writer(
    db: Database,
    fence: Option<Fence>,
) -> (JoinHandle<Result<WriteStats>>, mpsc::Sender<Prepared>) {
    let (tx, mut rx) = mpsc::channel::<Prepared>(4);
    let handle = tokio::spawn(async move {
        let mut stats = WriteStats::default();
        while let Some(batch) = rx.recv().await {
            stats.add(store::execute_prepared(&db, batch, fence.as_ref()).await?);
        }
        Ok(stats)
    });
    (handle, tx)
}

async fn send(sender: &mpsc::Sender<Prepared>, batch: Vec<Write>) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let prepared = store::prepare(batch)?;
    // A closed channel means the writer failed; its error surfaces on join.
    let _ = sender.send(prepared).await;
    Ok(())
}

/// What a reconcile found (and, with repair, changed).
#[derive(Debug, Default)]
pub struct ReconcileReport {
    pub users: u64,
    pub documents: u64,
    /// Missing, surplus and differing documents (stale labels excluded).
    pub differences: Vec<DocChange>,
    /// Documents whose only differences are labels.
    pub stale_labels: Vec<DocChange>,
    pub drifts: Vec<Drift>,
    pub rejects: BTreeMap<RejectReason, u64>,
    pub repaired: Option<WriteStats>,
}

impl ReconcileReport {
    pub fn count(&self, kind: Kind) -> usize {
        self.differences.iter().filter(|d| d.kind == kind).count()
    }

    pub fn users_with_drift(&self) -> Vec<ObjectId> {
        let mut users: Vec<ObjectId> = self.drifts.iter().map(|d| d.user).collect();
        users.dedup();
        users
    }
}

/// Recomputes `range` and compares it with the stored documents. Reads all
/// history, so that drift can be measured.
pub async fn reconcile(
    db: &Database,
    cal: Calendar,
    range: Range,
    now: DateTime<Utc>,
    repair: bool,
    show_progress: bool,
) -> Result<ReconcileReport> {
    let days = (range.to - range.from).num_days() as u64 + 1;
    let mut scanner = Scanner::open(db, cal, range, now, Scope::AllHistory).await?;
    let mut progress = Progress::new("reconcile", days, show_progress);
    let mut report = ReconcileReport::default();
    while let Some(user) = scanner.next_user().await? {
        report.documents += user.documents as u64;
        for change in user.changes {
            if change.difference.is_stale_label() {
                report.stale_labels.push(change);
            } else {
                report.differences.push(change);
            }
        }
        report.drifts.extend(user.drifts);
        progress.update(scanner.users_done, scanner.users_with_pockets() as u64);
    }
    progress.finish();
    report.users = scanner.users_done;
    report.rejects = scanner.reject_counts.clone();
    if repair {
        let writes: Vec<Write> = report
            .differences
            .iter()
            .chain(&report.stale_labels)
            .map(|c| c.write.clone())
            .collect();
        report.repaired = Some(store::execute(db, writes, None).await?);
        scanner.flush_rejects(db).await?;
    }
    Ok(report)
}
