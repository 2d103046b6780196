//! The light timers (`docs/data-contract.md` §6): when each finalization
//! is due, and what it does. Times are local to the reporting zone and
//! DST-safe: a local time skipped by a DST jump fires at the first instant
//! after the jump, a repeated one fires once, at its first occurrence.
//!
//! - reports of day D final at D + `report_at` (default 23:59);
//! - snapshots of day D at D+1 + `snapshot_at` (default 00:00);
//! - monthly summaries of month M at the 1st of M+1 + `monthly_at` (00:01).
//!
//! Each (kind, period) runs once, recorded in `tally_finalizations`; what a
//! step writes is [`crate::batch::finalize`].

use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;

use crate::core::calendar::{first_of_month, local_instant, next_day, prev_day, Calendar};
use crate::core::reports::Kind;

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
}
