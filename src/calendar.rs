//! Days and months in the reporting time zone (SPEC §3).
//!
//! Day D is [first instant whose local date is D, first instant of D+1);
//! around a DST change a day is 23 or 25 hours long. Output documents label
//! a day (or a month, by its 1st) as that calendar date at 00:00:00 UTC.

use bson::DateTime as BsonDateTime;
use chrono::{DateTime, Datelike, Days, LocalResult, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

/// The reporting calendar: a time zone and the arithmetic of its days.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Calendar {
    tz: Tz,
}

impl Calendar {
    pub fn new(tz: Tz) -> Calendar {
        Calendar { tz }
    }

    /// Parses an IANA zone name such as `America/New_York`.
    pub fn from_name(name: &str) -> Result<Calendar, String> {
        name.parse::<Tz>().map(Calendar::new).map_err(|_| {
            format!(
                "unknown time zone {name:?} (expected an IANA name such as UTC or Europe/Paris)"
            )
        })
    }

    pub fn name(&self) -> &'static str {
        self.tz.name()
    }

    /// The local date of an instant given in milliseconds since the epoch.
    pub fn day_of_millis(&self, millis: i64) -> NaiveDate {
        let utc =
            DateTime::<Utc>::from_timestamp_millis(millis).unwrap_or(DateTime::<Utc>::MIN_UTC);
        self.day_of(utc)
    }

    pub fn day_of(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.tz).date_naive()
    }

    /// First instant whose local date is `day`.
    pub fn day_start(&self, day: NaiveDate) -> DateTime<Utc> {
        let midnight = day.and_hms_opt(0, 0, 0).expect("midnight exists");
        match self.tz.from_local_datetime(&midnight) {
            LocalResult::Single(t) => t.with_timezone(&Utc),
            LocalResult::Ambiguous(earliest, _) => earliest.with_timezone(&Utc),
            LocalResult::None => {
                // Midnight was skipped by a DST jump: the day starts at the
                // first local minute that exists (gaps are whole minutes).
                let mut t = midnight;
                loop {
                    t += chrono::Duration::minutes(1);
                    if let Some(found) = self.tz.from_local_datetime(&t).earliest() {
                        return found.with_timezone(&Utc);
                    }
                }
            }
        }
    }

    /// Exclusive end of `day`: the start of the next day.
    pub fn day_end(&self, day: NaiveDate) -> DateTime<Utc> {
        self.day_start(next_day(day))
    }

    pub fn month_start(&self, month: NaiveDate) -> DateTime<Utc> {
        self.day_start(first_of_month(month))
    }
}

pub fn next_day(day: NaiveDate) -> NaiveDate {
    day.checked_add_days(Days::new(1)).expect("date in range")
}

pub fn prev_day(day: NaiveDate) -> NaiveDate {
    day.checked_sub_days(Days::new(1)).expect("date in range")
}

pub fn first_of_month(day: NaiveDate) -> NaiveDate {
    day.with_day(1).expect("every month has a 1st")
}

pub fn last_of_month(day: NaiveDate) -> NaiveDate {
    prev_day(first_of_month(day) + Months::new(1))
}

pub fn first_of_year(day: NaiveDate) -> NaiveDate {
    NaiveDate::from_ymd_opt(day.year(), 1, 1).expect("1 January exists")
}

/// Every day from `from` to `to`, both included.
pub fn days(from: NaiveDate, to: NaiveDate) -> impl Iterator<Item = NaiveDate> {
    from.iter_days().take_while(move |d| *d <= to)
}

/// The 1st of every month that intersects [from, to].
pub fn months(from: NaiveDate, to: NaiveDate) -> impl Iterator<Item = NaiveDate> {
    let mut m = first_of_month(from);
    std::iter::from_fn(move || {
        if m > to {
            return None;
        }
        let this = m;
        m = m + Months::new(1);
        Some(this)
    })
}

/// The label written in `report_date`, `snapshot_date` and `month`: the
/// calendar date at 00:00:00 UTC.
pub fn date_label(day: NaiveDate) -> BsonDateTime {
    let utc = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    BsonDateTime::from_millis(utc.timestamp_millis())
}

/// Inverse of [`date_label`].
pub fn label_date(label: BsonDateTime) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_millis(label.timestamp_millis())
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
        .date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn new_york_dst_days_are_23_and_25_hours() {
        let cal = Calendar::from_name("America/New_York").unwrap();
        let spring = d("2026-03-08");
        let fall = d("2026-11-01");
        assert_eq!(
            (cal.day_end(spring) - cal.day_start(spring)).num_hours(),
            23
        );
        assert_eq!((cal.day_end(fall) - cal.day_start(fall)).num_hours(), 25);
        assert_eq!(cal.day_start(spring), utc("2026-03-08T05:00:00Z"));
        assert_eq!(cal.day_start(d("2026-03-09")), utc("2026-03-09T04:00:00Z"));
        // 01:30 local happens twice on the fall-back day; both belong to it.
        assert_eq!(cal.day_of(utc("2026-11-01T05:30:00Z")), fall);
        assert_eq!(cal.day_of(utc("2026-11-01T06:30:00Z")), fall);
    }

    #[test]
    fn last_millisecond_and_midnight_fall_on_their_own_days() {
        let cal = Calendar::from_name("America/New_York").unwrap();
        // 23:59:59.999 local on 2026-07-04 is 03:59:59.999Z on 07-05.
        assert_eq!(cal.day_of(utc("2026-07-05T03:59:59.999Z")), d("2026-07-04"));
        assert_eq!(cal.day_of(utc("2026-07-05T04:00:00Z")), d("2026-07-05"));
        let utc_cal = Calendar::from_name("UTC").unwrap();
        assert_eq!(
            utc_cal.day_of(utc("2026-07-04T23:59:59.999Z")),
            d("2026-07-04")
        );
        assert_eq!(utc_cal.day_of(utc("2026-07-05T00:00:00Z")), d("2026-07-05"));
    }

    #[test]
    fn a_skipped_midnight_starts_the_day_at_the_jump() {
        // Santiago springs forward at local midnight: 00:00 becomes 01:00.
        let cal = Calendar::from_name("America/Santiago").unwrap();
        let day = d("2026-09-06");
        let start = cal.day_start(day);
        assert_eq!(cal.day_of(start), day);
        assert_ne!(cal.day_of(start - chrono::Duration::milliseconds(1)), day);
    }

    #[test]
    fn unknown_zone_is_an_error_that_names_it() {
        let err = Calendar::from_name("Mars/Olympus").unwrap_err();
        assert!(err.contains("Mars/Olympus"), "{err}");
    }

    #[test]
    fn month_helpers() {
        assert_eq!(last_of_month(d("2028-02-10")), d("2028-02-29"));
        let ms: Vec<_> = months(d("2026-11-15"), d("2027-01-02")).collect();
        assert_eq!(ms, vec![d("2026-11-01"), d("2026-12-01"), d("2027-01-01")]);
        assert_eq!(days(d("2026-02-27"), d("2026-03-01")).count(), 3);
        assert_eq!(label_date(date_label(d("2026-05-31"))), d("2026-05-31"));
    }
}
