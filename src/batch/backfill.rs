//! `backfill`: the scan of [`crate::batch::scan`] put to work. It writes
//! what differs (idempotent: a second run over unchanged data writes
//! nothing). Writes go to a writer task through a
//! bounded channel, so reading the source and writing the output overlap
//! while memory stays bounded.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::bail;
use crate::error::Result;
use bson::oid::ObjectId;
use chrono::{DateTime, Utc};
use mongodb::Database;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::batch::scan::{Focus, Range, Scanner, Scope};
use crate::core::calendar::Calendar;
use crate::core::source::RejectReason;
use crate::mongo::bulk::{self, Prepared, WriteStats};
use crate::mongo::lease::Fence;
use crate::ops::progress::Progress;
use crate::plan::write::Write;

/// Writes flushed per bulk round trip.
const FLUSH_AT: usize = 1000;

/// Rescans of users whose writes lost a race with another writer.
const RACE_RETRIES: usize = 3;

/// What a backfill did.
#[derive(Debug, Default)]
pub struct BackfillSummary {
    pub users: u64,
    pub transactions_read: u64,
    pub documents: u64,
    /// Every pass's writes; `conflicts` are those still lost after the
    /// rescans (a backfill that returns has none, and no errors).
    pub writes: WriteStats,
    pub rejects: BTreeMap<RejectReason, u64>,
    pub elapsed: Duration,
}

/// Computes every document of `range` from the source and writes the ones
/// that differ from what is stored.
///
/// A write that meets a document another writer stored meanwhile is not
/// done ([`bulk::execute`]: a conflict); the users of the writes sent
/// with it are scanned again, stored documents included, and what still
/// differs is written, up to `RACE_RETRIES` (3) times. Fails when a write
/// failed, or still lost its race after those rescans: the range is then
/// not known to be right.
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
/// instance of `tally run`): see [`bulk::execute`].
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
    let mut scanner = Scanner::open(db, cal, range.clone(), now, Scope::Dependencies).await?;
    let mut progress = Progress::new("backfill", days, show_progress);
    let (writer, sender) = spawn_writer(db.clone(), fence.clone());
    let mut summary = BackfillSummary::default();
    let mut buffer = Vec::with_capacity(FLUSH_AT);
    let mut users = Vec::new();
    while let Some(user) = scanner.next_user().await? {
        summary.documents += user.documents as u64;
        if let (Some(id), false) = (user.user, user.changes.is_empty()) {
            users.push(id);
        }
        buffer.extend(user.changes.into_iter().map(|c| c.write));
        if buffer.len() >= FLUSH_AT {
            send(
                &sender,
                std::mem::take(&mut buffer),
                std::mem::take(&mut users),
                fence.is_some(),
            )
            .await?;
        }
        if scanner.rejects.len() >= FLUSH_AT {
            scanner.flush_rejects(db, fence.as_ref()).await?;
        }
        progress.update(scanner.users_done, scanner.users_with_pockets() as u64);
    }
    send(&sender, buffer, users, fence.is_some()).await?;
    drop(sender);
    let (mut writes, mut raced) = writer.await??;
    scanner.scan_undated(db).await?;
    scanner.flush_rejects(db, fence.as_ref()).await?;
    progress.finish();
    for _ in 0..RACE_RETRIES {
        if raced.is_empty() {
            break;
        }
        // Those users' documents as another writer left them: recompute
        // and write what still differs, under the new guards.
        writes.conflicts = 0;
        let focus = Focus {
            users: Some(std::mem::take(&mut raced)),
            ..Focus::default()
        };
        let mut again =
            Scanner::open_focused(db, cal, range.clone(), now, Scope::Dependencies, focus).await?;
        let (mut rewrites, mut users) = (Vec::new(), Vec::new());
        while let Some(user) = again.next_user().await? {
            if let (Some(id), false) = (user.user, user.changes.is_empty()) {
                users.push(id);
            }
            rewrites.extend(user.changes.into_iter().map(|c| c.write));
        }
        let stats = bulk::execute(db, rewrites, fence.as_ref()).await?;
        if stats.conflicts > 0 {
            raced = users;
        }
        writes.add(stats);
    }
    summary.writes = writes;
    summary.users = scanner.users_done;
    summary.transactions_read = scanner.transactions_read;
    summary.rejects = scanner.reject_counts.clone();
    summary.elapsed = started.elapsed();
    check_writes(&summary.writes)?;
    Ok(summary)
}

/// Fails when writes failed or lost their race with another writer: what
/// was computed is then not all stored.
fn check_writes(w: &WriteStats) -> Result<()> {
    if w.errors > 0 || w.conflicts > 0 {
        bail!(
            "{} writes failed (see the log) and {} lost a race with another writer \
             (after {RACE_RETRIES} rescans); run backfill again",
            w.errors,
            w.conflicts
        );
    }
    Ok(())
}

/// A bulk of writes for the writer task, with the users they are for.
type Job = (Prepared, Vec<ObjectId>);

/// The writer task's outcome: the writes' stats, and the users of the
/// bulks that had conflicts.
type Outcome = Result<(WriteStats, Vec<ObjectId>)>;

/// The writer task, aborted when its caller is dropped (a time limit, a
/// lost lease, a stop): it must not go on writing behind a caller that
/// has given up.
struct Writer(JoinHandle<Outcome>);

impl Drop for Writer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::future::Future for Writer {
    type Output = Result<Outcome, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// The writer task: sends bulk commands the scanning side has already
/// encoded ([`bulk::prepare`]), so encoding overlaps the server's work.
fn spawn_writer(db: Database, fence: Option<Fence>) -> (Writer, mpsc::Sender<Job>) {
    let (tx, mut rx) = mpsc::channel::<Job>(4);
    let handle = tokio::spawn(async move {
        let mut stats = WriteStats::default();
        let mut raced = Vec::new();
        while let Some((batch, users)) = rx.recv().await {
            let s = bulk::execute_prepared(&db, batch, fence.as_ref()).await?;
            if s.conflicts > 0 {
                raced.extend(users);
            }
            stats.add(s);
        }
        Ok((stats, raced))
    });
    (Writer(handle), tx)
}

/// Encodes `batch` for the writer task (in commands sized for a fence when
/// the writes are `fenced`).
async fn send(
    sender: &mpsc::Sender<Job>,
    batch: Vec<Write>,
    users: Vec<ObjectId>,
    fenced: bool,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let prepared = bulk::prepare(batch, fenced)?;
    // A closed channel means the writer failed; its error surfaces on join.
    let _ = sender.send((prepared, users)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backfill_with_failed_or_lost_writes_is_an_error() {
        let ok = WriteStats {
            inserted: 5,
            updated: 1,
            ..Default::default()
        };
        assert!(check_writes(&ok).is_ok());
        for bad in [
            WriteStats { errors: 2, ..ok },
            WriteStats { conflicts: 1, ..ok },
        ] {
            let e = check_writes(&bad).unwrap_err().to_string();
            assert!(e.contains("run backfill again"), "{e}");
        }
    }
}
