//! The light timers (SPEC §6): when each finalization is due, and what it
//! does. Times are local to the reporting zone and DST-safe: a local time
//! skipped by a DST jump fires at the first instant after the jump, a
//! repeated one fires once, at its first occurrence.
//!
//! - reports of day D final at D + `report_at` (default 23:59);
//! - snapshots of day D at D+1 + `snapshot_at` (default 00:00);
//! - monthly summaries of month M at the 1st of M+1 + `monthly_at` (00:01).
//!
//! Each (kind, period) runs once, recorded in `tally_finalizations`.

use anyhow::{Context, Result};
use bson::{doc, DateTime as BsonDateTime, Document};
use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use mongodb::Database;

use crate::calendar::{date_label, first_of_month, local_instant, next_day, prev_day, Calendar};
use crate::lease::{self, Fence};
use crate::reports::Kind;
use crate::scan::{scan_since, Focus, Range};
use crate::store;

/// Local times of the three steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub report_at: NaiveTime,
    pub snapshot_at: NaiveTime,
    pub monthly_at: NaiveTime,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            report_at: NaiveTime::from_hms_opt(23, 59, 0).expect("time"),
            snapshot_at: NaiveTime::from_hms_opt(0, 0, 0).expect("time"),
            monthly_at: NaiveTime::from_hms_opt(0, 1, 0).expect("time"),
        }
    }
}

/// Parses `HH:MM` (or `HH:MM:SS`).
pub fn parse_time(s: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s, "%H:%M")
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M:%S"))
        .map_err(|_| format!("{s:?} is not a time of day: use HH:MM, e.g. 23:59"))
}

impl Schedule {
    /// When the step of `kind` for `period` is due.
    pub fn due_at(&self, cal: &Calendar, kind: Kind, period: NaiveDate) -> DateTime<Utc> {
        let tz: Tz = cal.name().parse().expect("calendar zone");
        match kind {
            Kind::Report => local_instant(tz, period, self.report_at),
            Kind::Snapshot => local_instant(tz, next_day(period), self.snapshot_at),
            Kind::Monthly => {
                local_instant(tz, first_of_month(period) + Months::new(1), self.monthly_at)
            }
        }
    }

    /// The latest period of `kind` whose step is due at `now`.
    pub fn latest_due(&self, cal: &Calendar, kind: Kind, now: DateTime<Utc>) -> NaiveDate {
        let today = cal.day_of(now);
        let mut period = match kind {
            Kind::Report => today,
            Kind::Snapshot => prev_day(today),
            Kind::Monthly => prev_day(first_of_month(today)).with_day(1).expect("1st"),
        };
        while self.due_at(cal, kind, period) > now {
            period = previous(kind, period);
        }
        period
    }

    /// Periods of `kind` due at `now` and after `done` (all of them, oldest
    /// first); with nothing done yet, only the latest.
    pub fn due_since(
        &self,
        cal: &Calendar,
        kind: Kind,
        done: Option<NaiveDate>,
        now: DateTime<Utc>,
    ) -> Vec<NaiveDate> {
        let latest = self.latest_due(cal, kind, now);
        let Some(done) = done else {
            return vec![latest];
        };
        let mut out = Vec::new();
        let mut p = latest;
        while p > done {
            out.push(p);
            p = previous(kind, p);
        }
        out.reverse();
        out
    }
}

pub fn previous(kind: Kind, period: NaiveDate) -> NaiveDate {
    match kind {
        Kind::Monthly => first_of_month(prev_day(first_of_month(period))),
        _ => prev_day(period),
    }
}

pub fn next(kind: Kind, period: NaiveDate) -> NaiveDate {
    match kind {
        Kind::Monthly => first_of_month(period) + Months::new(1),
        _ => next_day(period),
    }
}

/// Runs one finalization step; returns the number of documents written.
/// Fails, so that the caller does not record the step done, when a write
/// failed or still lost its race with another writer after rescans.
///
/// Marks every stored document of `kind` and `period` final in one update
/// (bookkeeping as [`crate::store::write_over`] sets it); the number changed.
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
                    crate::calendar::last_of_month(period),
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
                let stats = store::execute(db, writes, fence).await?;
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
            anyhow::bail!(
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
/// does not record it ([`crate::state::finish`]) and runs it again.
fn check_step_writes(kind: Kind, period: NaiveDate, stats: &store::WriteStats) -> Result<()> {
    if stats.errors > 0 {
        anyhow::bail!(
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

    fn cal(name: &str) -> Calendar {
        Calendar::from_name(name).unwrap()
    }

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn steps_fall_at_their_local_times() {
        let c = cal("America/New_York");
        let s = Schedule::default();
        assert_eq!(
            s.due_at(&c, Kind::Report, d("2026-07-04")),
            at("2026-07-05T03:59:00Z")
        );
        assert_eq!(
            s.due_at(&c, Kind::Snapshot, d("2026-07-04")),
            at("2026-07-05T04:00:00Z")
        );
        assert_eq!(
            s.due_at(&c, Kind::Monthly, d("2026-07-01")),
            at("2026-08-01T04:01:00Z")
        );
    }

    #[test]
    fn dst_days_keep_local_times() {
        let c = cal("America/New_York");
        let s = Schedule::default();
        // Spring forward on 2026-03-08: 23:59 that day is EDT (UTC-4).
        assert_eq!(
            s.due_at(&c, Kind::Report, d("2026-03-08")),
            at("2026-03-09T03:59:00Z")
        );
        // A time skipped by the jump (02:30) fires at the jump, once.
        let skipped = Schedule {
            report_at: parse_time("02:30").unwrap(),
            ..s
        };
        assert_eq!(
            skipped.due_at(&c, Kind::Report, d("2026-03-08")),
            at("2026-03-08T07:00:00Z")
        );
        // A repeated time (01:30 on 2026-11-01) fires at its first occurrence.
        let repeated = Schedule {
            report_at: parse_time("01:30").unwrap(),
            ..s
        };
        assert_eq!(
            repeated.due_at(&c, Kind::Report, d("2026-11-01")),
            at("2026-11-01T05:30:00Z")
        );
    }

    #[test]
    fn missed_periods_are_listed_oldest_first() {
        let c = cal("UTC");
        let s = Schedule::default();
        let now = at("2026-03-03T00:00:30Z");
        assert_eq!(s.latest_due(&c, Kind::Report, now), d("2026-03-02"));
        assert_eq!(s.latest_due(&c, Kind::Snapshot, now), d("2026-03-02"));
        assert_eq!(
            s.latest_due(&c, Kind::Monthly, now),
            d("2026-02-01"),
            "February was due on 1 March"
        );
        let first_minute = at("2026-03-01T00:00:30Z");
        assert_eq!(
            s.latest_due(&c, Kind::Monthly, first_minute),
            d("2026-01-01"),
            "not yet 00:01"
        );
        assert_eq!(
            s.due_since(&c, Kind::Snapshot, Some(d("2026-02-27")), now),
            vec![d("2026-02-28"), d("2026-03-01"), d("2026-03-02")]
        );
        assert_eq!(
            s.due_since(&c, Kind::Report, Some(d("2026-03-02")), now),
            Vec::<NaiveDate>::new()
        );
        assert_eq!(
            s.due_since(&c, Kind::Report, None, now),
            vec![d("2026-03-02")]
        );
    }

    #[test]
    fn a_step_with_failed_writes_is_an_error() {
        let day = d("2026-03-02");
        let ok = store::WriteStats {
            inserted: 3,
            updated: 2,
            ..Default::default()
        };
        assert!(check_step_writes(Kind::Snapshot, day, &ok).is_ok());
        let failed = store::WriteStats { errors: 1, ..ok };
        let e = check_step_writes(Kind::Snapshot, day, &failed).unwrap_err();
        assert!(e.to_string().contains("1 writes failed"), "{e}");
        assert!(e.to_string().contains("2026-03-02"), "{e}");
    }
}
