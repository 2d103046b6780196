//! What events left to do: the one set a flush consumes. Pure: no I/O,
//! no clock but the `Instant`s it is given.
//!
//! The checkpoint's resume token may move past an event only once
//! everything the event queued here is done ([`Work::settled`]): a
//! `kill -9` before that replays the event, which queues the same work
//! again (recomputations are idempotent).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use bson::oid::ObjectId;
use bson::Bson;
use chrono::{DateTime, NaiveDate, Utc};

use crate::core::source::{RejectReason, SourceId};

/// A source document's validity as last seen: a reason, or `None` for a
/// valid (or deleted) document.
pub(super) type Verdict = (&'static str, SourceId, Option<RejectReason>);

#[derive(Debug, Default)]
pub(super) struct Work {
    /// user → first day to recompute.
    pub dirty: HashMap<ObjectId, NaiveDate>,
    /// Dirty users to rescan from the source (a change before the window,
    /// or a user it does not hold); the others are rebuilt from memory.
    pub rescan: HashSet<ObjectId>,
    /// Users whose documents before the window are to be recomputed: a
    /// focused rescan from each one's first stored document (drift moves
    /// every earlier closing balance, contract §4.3). Until done, the user
    /// stays in the checkpoint's `pending`.
    pub deep: HashSet<ObjectId>,
    /// Users queued only to compare their window with what is stored (a
    /// start): a clean comparison does not make them pending.
    pub compare: HashSet<ObjectId>,
    /// user → (earliest day touched by a recent transaction event, when).
    pub floors: HashMap<ObjectId, (NaiveDate, Instant)>,
    /// Users whose days before their floor were left for later although
    /// their anchors had moved (a transaction waiting for its balance
    /// write, `Tailer::past_waits`): user → (the first day computed with
    /// the moved anchors, which the user's next computation covers again;
    /// when its past first waited). Removed once a computation that left
    /// nothing for later is written; a user still here when its floor
    /// expires is queued again.
    pub redo: HashMap<ObjectId, (NaiveDate, DateTime<Utc>)>,
    /// Documents whose old version must be located (id, owner if known).
    pub locate: Vec<(Bson, Option<ObjectId>)>,
    /// Validity of source documents seen, in event order.
    pub verdicts: Vec<Verdict>,
    /// Recompute the whole window (an old version nothing could locate).
    pub full_refresh: bool,
    /// When the oldest unflushed recomputation was queued.
    pub first_dirty_at: Option<Instant>,
    /// Server wall times (ms) of the events handled since the last flush:
    /// once a flush commits, each one's latency is observed
    /// (`tally_source_to_write_seconds`); dropped unobserved when the
    /// events queued nothing to write.
    pub walls: Vec<i64>,
}

impl Work {
    /// Queues `user` for recomputation from `day` (`rescan`: from the
    /// source). `tx_day`, the day a transaction event touched, lowers the
    /// user's floor for `settle` (older floors are forgotten).
    pub fn mark(
        &mut self,
        user: ObjectId,
        day: NaiveDate,
        tx_day: Option<NaiveDate>,
        rescan: bool,
        settle: Duration,
        now: Instant,
    ) {
        if rescan {
            self.rescan.insert(user);
        }
        let e = self.dirty.entry(user).or_insert(day);
        *e = (*e).min(day);
        if let Some(d) = tx_day {
            let floor = self.floors.entry(user).or_insert((d, now));
            if now.saturating_duration_since(floor.1) >= settle {
                *floor = (d, now);
            } else {
                *floor = (floor.0.min(d), now);
            }
        }
        self.first_dirty_at.get_or_insert(now);
    }

    /// The earliest day a transaction event touched within `settle`.
    pub fn floor(&self, user: &ObjectId, settle: Duration, now: Instant) -> Option<NaiveDate> {
        self.floors
            .get(user)
            .filter(|(_, at)| now.saturating_duration_since(*at) < settle)
            .map(|(d, _)| *d)
    }

    /// Puts back what a failed flush took (`dirty`, `full_refresh`).
    pub fn restore(
        &mut self,
        dirty: HashMap<ObjectId, NaiveDate>,
        full_refresh: bool,
        now: Instant,
    ) {
        for (user, day) in dirty {
            let e = self.dirty.entry(user).or_insert(day);
            *e = (*e).min(day);
        }
        self.full_refresh |= full_refresh;
        self.first_dirty_at.get_or_insert(now);
    }

    /// Whether nothing is queued: no user to recompute, no old version to
    /// locate, no reject verdict to record, no refresh to do. Only then may
    /// the checkpoint move past the events handled.
    pub fn settled(&self) -> bool {
        self.dirty.is_empty()
            && self.locate.is_empty()
            && self.verdicts.is_empty()
            && !self.full_refresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, d).unwrap()
    }

    #[test]
    fn marks_keep_the_earliest_day_and_a_floor_only_while_recent() {
        let mut w = Work::default();
        let (user, settle, t0) = (ObjectId::new(), Duration::from_secs(20), Instant::now());
        assert!(w.settled());
        w.mark(user, day(10), Some(day(10)), false, settle, t0);
        w.mark(
            user,
            day(12),
            Some(day(8)),
            true,
            settle,
            t0 + Duration::from_secs(1),
        );
        assert_eq!(w.dirty[&user], day(10));
        assert!(w.rescan.contains(&user));
        assert!(!w.settled());
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(w.floor(&user, settle, t1), Some(day(8)));
        assert_eq!(
            w.floor(&user, settle, t1 + settle),
            None,
            "forgotten after settle"
        );
        // A floor older than `settle` is replaced, not lowered.
        w.mark(user, day(15), Some(day(15)), false, settle, t1 + settle);
        assert_eq!(w.floor(&user, settle, t1 + settle), Some(day(15)));
        assert_eq!(w.first_dirty_at, Some(t0));
    }

    #[test]
    fn a_failed_flush_is_restored_and_anything_queued_unsettles() {
        let mut w = Work::default();
        let (a, b, now) = (ObjectId::new(), ObjectId::new(), Instant::now());
        w.mark(b, day(20), None, false, Duration::ZERO, now);
        let taken = std::mem::take(&mut w.dirty);
        w.mark(b, day(25), None, false, Duration::ZERO, now);
        w.restore(
            HashMap::from([(a, day(3))])
                .into_iter()
                .chain(taken)
                .collect(),
            true,
            now,
        );
        assert_eq!(w.dirty[&a], day(3));
        assert_eq!(w.dirty[&b], day(20), "the earlier day wins");
        assert!(w.full_refresh);
        let mut v = Work::default();
        v.locate.push((Bson::Int32(1), None));
        assert!(!v.settled());
        let mut v = Work::default();
        v.verdicts.push(("pockets", SourceId::Oid(a), None));
        assert!(!v.settled());
    }
}
