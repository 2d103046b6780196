//! Days and months in the reporting time zone (`docs/data-contract.md` §3).
//!
//! Day D is [first instant whose local date is D, first instant of D+1);
//! around a DST change a day is 23 or 25 hours long. Output documents label
//! a day (or a month, by its 1st) as that calendar date at 00:00:00 UTC.

use std::sync::{Mutex, OnceLock};

use bson::DateTime as BsonDateTime;
use chrono::{DateTime, Datelike, Days, LocalResult, Months, NaiveDate, Offset, TimeZone, Utc};
use chrono_tz::Tz;

const DAY_MS: i64 = 86_400_000;

/// The reporting calendar: a time zone and the arithmetic of its days.
///
/// Day boundaries are answered from a per-zone table of day starts (filled
/// lazily, 128 days at a time, by the exact DST-aware computation of
/// [`Calendar::day_start`]), so finding the day of an instant — once per
/// transaction folded — costs a few array reads instead of a time-zone
/// conversion. Instants outside the table (before 1900 or from 2200 on)
/// take the exact computation directly.
#[derive(Clone, Copy)]
pub struct Calendar {
    tz: Tz,
    table: &'static DayTable,
}

impl PartialEq for Calendar {
    fn eq(&self, other: &Calendar) -> bool {
        self.tz == other.tz
    }
}

impl Eq for Calendar {}

impl std::fmt::Debug for Calendar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calendar").field("tz", &self.tz).finish()
    }
}

impl Calendar {
    pub fn new(tz: Tz) -> Calendar {
        Calendar {
            tz,
            table: DayTable::of(tz),
        }
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

    /// The day containing an instant given in milliseconds since the epoch:
    /// the D with `day_start(D) <= millis < day_start(D + 1)` (contract §3).
    pub fn day_of_millis(&self, millis: i64) -> NaiveDate {
        match self.table.day_of_millis(millis) {
            Some(day) => day,
            None => local_date(self.tz, millis),
        }
    }

    pub fn day_of(&self, at: DateTime<Utc>) -> NaiveDate {
        // Day boundaries are whole milliseconds, so the floor is exact.
        self.day_of_millis(at.timestamp_millis())
    }

    /// First instant whose local date is `day`.
    pub fn day_start(&self, day: NaiveDate) -> DateTime<Utc> {
        let millis = match self.table.start(day_number(day)) {
            Some((start, _)) => start,
            None => exact_day_start(self.tz, day),
        };
        DateTime::<Utc>::from_timestamp_millis(millis).expect("a day start is a valid instant")
    }

    /// Exclusive end of `day`: the start of the next day.
    pub fn day_end(&self, day: NaiveDate) -> DateTime<Utc> {
        self.day_start(next_day(day))
    }

    pub fn month_start(&self, month: NaiveDate) -> DateTime<Utc> {
        self.day_start(first_of_month(month))
    }
}

/// First instant of the dates tally supports in source documents:
/// 1900-01-01T00:00:00Z (see [`supports_millis`]).
pub const SUPPORTED_FROM_MILLIS: i64 = -2_208_988_800_000;
/// End (exclusive) of the supported dates: 2200-01-01T00:00:00Z.
pub const SUPPORTED_UNTIL_MILLIS: i64 = 7_258_118_400_000;

/// Whether a source date (milliseconds since the epoch) lies in the range
/// tally supports: from 1900-01-01T00:00:00Z (included) to
/// 2200-01-01T00:00:00Z (excluded), which the day table covers in every zone.
/// The days of such instants, and the days and months around them that
/// reports, snapshots and year-to-date sums look at, are far from the
/// limits of the date types, so no day arithmetic on them can fail; dates
/// outside (year 1, year 9999, garbage milliseconds) are rejected when the
/// source is decoded ([`crate::core::source::RejectReason::DateOutOfRange`]).
pub fn supports_millis(millis: i64) -> bool {
    (SUPPORTED_FROM_MILLIS..SUPPORTED_UNTIL_MILLIS).contains(&millis)
}

/// Days since 1970-01-01.
fn day_number(day: NaiveDate) -> i64 {
    i64::from(day.num_days_from_ce()) - EPOCH_DAYS_FROM_CE
}

const EPOCH_DAYS_FROM_CE: i64 = 719_163;

/// The local date of an instant, from the zone rules; instants beyond the
/// dates chrono can represent clamp to its first or last date (bad input
/// must never panic).
fn local_date(tz: Tz, millis: i64) -> NaiveDate {
    let Some(utc) = DateTime::<Utc>::from_timestamp_millis(millis) else {
        return if millis < 0 {
            NaiveDate::MIN
        } else {
            NaiveDate::MAX
        };
    };
    let naive = utc.naive_utc();
    let offset = tz.offset_from_utc_datetime(&naive).fix();
    naive
        .checked_add_offset(offset)
        .map_or(naive.date(), |local| local.date())
}

/// First instant (millis) whose local date is `day`, from the zone rules.
fn exact_day_start(tz: Tz, day: NaiveDate) -> i64 {
    local_instant(tz, day, chrono::NaiveTime::MIN).timestamp_millis()
}

/// The first instant at or after local `day` + `time`: a time skipped by a
/// DST jump falls at the first local minute after it that exists (gaps are
/// whole minutes), a repeated one at its first occurrence.
pub fn local_instant(tz: Tz, day: NaiveDate, time: chrono::NaiveTime) -> DateTime<Utc> {
    let local = day.and_time(time);
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
        LocalResult::None => {
            let mut t = local;
            loop {
                t += chrono::Duration::minutes(1);
                if let Some(found) = tz.from_local_datetime(&t).earliest() {
                    return found.with_timezone(&Utc);
                }
            }
        }
    }
}

/// Days per lazily filled chunk of a [`DayTable`].
const CHUNK: i64 = 128;
/// First day the table covers: 1900-01-01 (days since 1970-01-01).
const TABLE_FIRST: i64 = -25_567;
/// Chunks covering 1900-01-01 up to 2200-01-01 (109,574 days).
const TABLE_CHUNKS: usize = 857;

/// Day starts of one zone, one chunk of [`CHUNK`] days filled on first use.
/// One table per zone for the life of the process (a few KiB until used).
struct DayTable {
    tz: Tz,
    chunks: Box<[OnceLock<Chunk>]>,
}

/// (start millis, date) of [`CHUNK`] consecutive days.
type Chunk = Box<[(i64, NaiveDate)]>;

impl DayTable {
    fn of(tz: Tz) -> &'static DayTable {
        static TABLES: OnceLock<Mutex<Vec<&'static DayTable>>> = OnceLock::new();
        let mut tables = TABLES
            .get_or_init(|| Mutex::new(Vec::new()))
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tables.iter().find(|t| t.tz == tz) {
            return t;
        }
        let table: &'static DayTable = Box::leak(Box::new(DayTable {
            tz,
            chunks: (0..TABLE_CHUNKS).map(|_| OnceLock::new()).collect(),
        }));
        tables.push(table);
        table
    }

    /// (start millis, date) of day number `n`, when the table covers it.
    #[inline]
    fn start(&self, n: i64) -> Option<(i64, NaiveDate)> {
        let i = n.checked_sub(TABLE_FIRST)?;
        if i < 0 {
            return None;
        }
        let chunk = self.chunks.get((i / CHUNK) as usize)?;
        let days = chunk.get_or_init(|| self.fill(i / CHUNK));
        Some(days[(i % CHUNK) as usize])
    }

    #[cold]
    fn fill(&self, chunk: i64) -> Chunk {
        let first = TABLE_FIRST + chunk * CHUNK;
        (first..first + CHUNK)
            .map(|n| {
                let day = NaiveDate::from_num_days_from_ce_opt((n + EPOCH_DAYS_FROM_CE) as i32)
                    .expect("table days are valid dates");
                (exact_day_start(self.tz, day), day)
            })
            .collect()
    }

    /// The day D with start(D) <= millis < start(D + 1), or `None` outside
    /// the table. A local date differs from the UTC date by at most one day
    /// (offsets are under 24 hours), so D is among UTC day ± 1; a skipped
    /// day has start(D) = start(D + 1) and is never chosen.
    #[inline]
    fn day_of_millis(&self, millis: i64) -> Option<NaiveDate> {
        let u = millis.div_euclid(DAY_MS);
        for n in (u - 2..=u + 1).rev() {
            let (start, day) = self.start(n)?;
            if start <= millis {
                // Days n + 1 .. u + 1 start after `millis` (checked above);
                // for n = u + 1 check day u + 2 too.
                if n == u + 1 && self.start(u + 2)?.0 <= millis {
                    return None;
                }
                return Some(day);
            }
        }
        None
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

    /// The table answers exactly what the zone rules say: every instant
    /// lies in [day_start(D), day_start(D + 1)) of the day it is given, that
    /// D is its local date wherever local dates never run backwards, and the
    /// table's day starts are the exact ones.
    #[test]
    fn table_agrees_with_the_zone_rules() {
        let zones = [
            "UTC",
            "America/New_York",
            "America/Santiago",    // midnight skipped and repeated
            "America/St_Johns",    // changed at 00:01 until 2011
            "Australia/Lord_Howe", // 30-minute DST
            "Asia/Kathmandu",      // +05:45
            "Pacific/Apia",        // skipped 2011-12-30 entirely
            "Pacific/Kiritimati",  // +14:00
            "Etc/GMT+12",          // -12:00
            "Europe/Dublin",       // negative DST
        ];
        let mut rng = crate::core::rng::Rng::new(11);
        for name in zones {
            let cal = Calendar::from_name(name).unwrap();
            // Every day start of 2008..2013 and 2024..2028 and the instants around it.
            for day in
                days(d("2008-01-01"), d("2013-12-31")).chain(days(d("2024-01-01"), d("2028-12-31")))
            {
                let start = exact_day_start(cal.tz, day);
                assert_eq!(cal.day_start(day).timestamp_millis(), start, "{name} {day}");
                let next = exact_day_start(cal.tz, next_day(day));
                if next > start {
                    assert_eq!(cal.day_of_millis(start), day, "{name} {day} start");
                    assert_eq!(cal.day_of_millis(next - 1), day, "{name} {day} last ms");
                }
            }
            // Random instants 1900..2200: windows hold, and agree with the local date
            // unless the local date ran backwards around that instant.
            for _ in 0..20_000 {
                let millis = -2_208_988_800_000 + (rng.below(9_467_280) as i64) * 1_000_000;
                let day = cal.day_of_millis(millis);
                assert!(exact_day_start(cal.tz, day) <= millis, "{name} {millis}");
                assert!(
                    millis < exact_day_start(cal.tz, next_day(day)),
                    "{name} {millis}"
                );
                let local = DateTime::<Utc>::from_timestamp_millis(millis)
                    .unwrap()
                    .with_timezone(&cal.tz)
                    .date_naive();
                if local != day {
                    assert_eq!(day, next_day(local), "{name} {millis}: a repeated hour");
                }
            }
        }
    }

    #[test]
    fn instants_outside_the_table_use_the_zone_rules() {
        let cal = Calendar::from_name("America/New_York").unwrap();
        for s in [
            "1850-06-01T12:00:00Z",
            "2300-06-01T03:59:59.999Z",
            "2300-06-01T04:00:00Z",
        ] {
            let t = utc(s);
            assert_eq!(cal.day_of(t), t.with_timezone(&cal.tz).date_naive(), "{s}");
            assert_eq!(
                cal.day_of_millis(t.timestamp_millis()),
                cal.day_of(t),
                "{s}"
            );
        }
        let far = d("2300-06-01");
        assert_eq!(
            cal.day_start(far).timestamp_millis(),
            exact_day_start(cal.tz, far)
        );
        // Out of chrono's range: clamped, never a panic (a bad `date` is input).
        assert_eq!(cal.day_of_millis(i64::MIN), NaiveDate::MIN);
        assert_eq!(cal.day_of_millis(i64::MAX), NaiveDate::MAX);
        let min = DateTime::<Utc>::MIN_UTC.timestamp_millis();
        assert_eq!(cal.day_of_millis(min), NaiveDate::MIN);
        assert_eq!(Calendar::from_name("UTC").unwrap(), Calendar::new(Tz::UTC));
    }

    #[test]
    fn the_supported_range_is_what_it_says_and_inside_the_table() {
        assert_eq!(
            SUPPORTED_FROM_MILLIS,
            utc("1900-01-01T00:00:00Z").timestamp_millis()
        );
        assert_eq!(
            SUPPORTED_UNTIL_MILLIS,
            utc("2200-01-01T00:00:00Z").timestamp_millis()
        );
        assert_eq!(SUPPORTED_FROM_MILLIS.div_euclid(DAY_MS), TABLE_FIRST);
        assert!(
            SUPPORTED_UNTIL_MILLIS.div_euclid(DAY_MS) < TABLE_FIRST + CHUNK * TABLE_CHUNKS as i64
        );
        assert!(supports_millis(SUPPORTED_FROM_MILLIS));
        assert!(supports_millis(-1), "before 1970 is fine");
        assert!(supports_millis(SUPPORTED_UNTIL_MILLIS - 1));
        assert!(!supports_millis(SUPPORTED_FROM_MILLIS - 1));
        assert!(!supports_millis(SUPPORTED_UNTIL_MILLIS));
        assert!(!supports_millis(i64::MIN));
        assert!(!supports_millis(i64::MAX));
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
