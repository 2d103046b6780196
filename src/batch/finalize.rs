//! The three night steps' work: reports marked final in one update,
//! snapshots and monthly summaries computed by the batch scan. When each is
//! due is [`crate::core::schedule`].

use crate::error::{Context, Result};
use bson::{doc, DateTime as BsonDateTime, Document};
use chrono::{DateTime, NaiveDate, Utc};
use mongodb::Database;

use crate::batch::scan::{scan_since, Focus, Range};
use crate::core::calendar::{date_label, first_of_month, Calendar};
use crate::core::reports::Kind;
use crate::mongo::bulk;
use crate::mongo::lease::{self, Fence};

/// Runs one finalization step; returns the number of documents written.
/// Fails, so that the caller does not record the step done, when a write
/// failed or still lost its race with another writer after rescans.
///
/// Marks every stored document of `kind` and `period` final in one update
/// (bookkeeping as [`crate::plan::write::write_over`] sets it); the number changed.
pub async fn mark_final(
    db: &Database,
    kind: Kind,
    period: NaiveDate,
    now: DateTime<Utc>,
    fence: Option<&Fence>,
) -> Result<u64> {
    let at = BsonDateTime::from_millis(now.timestamp_millis());
    let mut set = doc! {
        kind.final_field(): true, "updated_at": at, "generated_at": at,
        "revision": { "$add": [ { "$ifNull": ["$revision", 0] }, 1 ] },
    };
    if kind == Kind::Report {
        set.insert("finalized_at", at);
    }
    let pipeline = vec![doc! { "$set": set }];
    let coll = db.collection::<Document>(kind.collection());
    let filter =
        doc! { kind.date_field(): date_label(period), kind.final_field(): { "$ne": true } };
    // A write error fails the update (and the step): the driver returns it
    // as an error, never as a count.
    let r = match fence {
        None => coll
            .update_many(filter, pipeline)
            .await
            .with_context(|| format!("marking {} of {period} final", kind.collection()))?,
        Some(fence) => lease::fenced(db, fence, |s| {
            let (coll, filter, pipeline) = (coll.clone(), filter.clone(), pipeline.clone());
            Box::pin(async move { Ok(coll.update_many(filter, pipeline).session(s).await?) })
        })
        .await
        .with_context(|| format!("marking {} of {period} final", kind.collection()))?,
    };
    Ok(r.modified_count)
}

/// Reports: the day's reports are already current (the tailer keeps them),
/// so one update marks them all final. Snapshots and monthly summaries are
/// computed for every user by the same scan backfill uses, reading only the
/// days from the period's start on (year-to-date continues from the final
/// snapshot of the day before).
pub async fn finalize(
    db: &Database,
    cal: Calendar,
    kind: Kind,
    period: NaiveDate,
    now: DateTime<Utc>,
    trusted_from: NaiveDate,
    fence: Option<&Fence>,
) -> Result<u64> {
    match kind {
        Kind::Report => mark_final(db, kind, period, now, fence).await,
        Kind::Snapshot | Kind::Monthly => {
            let (from, to) = match kind {
                Kind::Monthly => (
                    first_of_month(period),
                    crate::core::calendar::last_of_month(period),
                ),
                _ => (period, period),
            };
            let range = Range {
                from,
                to,
                kinds: vec![kind],
            };
            let mut focus = Focus::default();
            let mut changed = 0;
            for _ in 0..=RACE_RETRIES {
                // Snapshots need the days from D on, months from their 1st on;
                // year-to-date comes from the final documents of the day before.
                let scanned =
                    scan_since(db, cal, range.clone(), now, from, trusted_from, focus).await?;
                let mut users = Vec::new();
                let mut writes = Vec::new();
                for u in scanned.results {
                    if let (Some(id), false) = (u.user, u.changes.is_empty()) {
                        users.push(id);
                    }
                    writes.extend(u.changes.into_iter().map(|c| c.write));
                }
                let stats = bulk::execute(db, writes, fence).await?;
                changed += stats.changed();
                check_step_writes(kind, period, &stats)?;
                if stats.conflicts == 0 {
                    return Ok(changed);
                }
                // Another writer stored some of these documents meanwhile:
                // those users again, from what is stored now.
                focus = Focus {
                    users: Some(users),
                    ..Focus::default()
                };
            }
            crate::bail!(
                "finalizing {} of {period}: writes still lost a race with another writer \
                 after {RACE_RETRIES} rescans; the step is not recorded and runs again",
                kind.cli_name()
            )
        }
    }
}

/// Rescans of the users whose finalization writes lost a race.
const RACE_RETRIES: usize = 3;

/// A step whose writes failed is not done: an error, so that the caller
/// does not record it ([`crate::mongo::state::finish`]) and runs it again.
fn check_step_writes(kind: Kind, period: NaiveDate, stats: &bulk::WriteStats) -> Result<()> {
    if stats.errors > 0 {
        crate::bail!(
            "finalizing {} of {period}: {} writes failed (see the log); the step is not \
             recorded and runs again",
            kind.cli_name(),
            stats.errors
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_with_failed_writes_is_an_error() {
        let day: NaiveDate = "2026-03-02".parse().unwrap();
        let ok = bulk::WriteStats {
            inserted: 3,
            updated: 2,
            ..Default::default()
        };
        assert!(check_step_writes(Kind::Snapshot, day, &ok).is_ok());
        let failed = bulk::WriteStats { errors: 1, ..ok };
        let e = check_step_writes(Kind::Snapshot, day, &failed).unwrap_err();
        assert!(e.to_string().contains("1 writes failed"), "{e}");
        assert!(e.to_string().contains("2026-03-02"), "{e}");
    }
}
