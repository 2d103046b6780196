//! The pure ledger: one user's live transactions folded into per-day,
//! per-category and per-pocket sums (`docs/data-contract.md` §1.2 effects,
//! §4.1 net and closing balances, §5.2–§5.4 the sums the documents show).
//! Every sum is exact money (contract §2.2): nothing is rounded here.
//!
//! `apply` and `retract` are exact inverses: retracting a transaction that
//! was applied restores the ledger to a state equal to one that never saw
//! it, empty entries included. That is what lets the incremental path edit
//! by "retract old, apply new" and still equal a from-scratch fold — the
//! property the tests check. No I/O and no clock reads here.

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use bson::oid::ObjectId;
use chrono::{Datelike, NaiveDate};

use crate::core::calendar::Calendar;
use crate::core::money::Money;
use crate::core::source::{Pocket, SourceId, Transaction, TxType};
use crate::core::vecmap::VecMap;

/// Sum and count of one category's transactions: a category entry of
/// contract §5.2 (`amount`, `transaction_count`). An entry whose count
/// falls to 0 is removed, so no entry has amount 0 (contract §5.7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CategorySum {
    /// Σ of the amounts, exact.
    pub amount: Money,
    /// Number of live transactions.
    pub count: i64,
}

/// What one transaction shows in a pocket's list (contract §5.2,
/// transaction entry); its `transaction_id` and `timestamp` are the key in
/// [`PocketDay::transactions`].
#[derive(Clone, Debug, PartialEq)]
pub struct TxEntry {
    /// Written as its canonical name (`type`, contract §1.2).
    pub kind: TxType,
    /// The amount as read, never rounded (contract §2.3).
    pub amount: Money,
    /// `category_id`, null when absent (labelled per contract §1.4).
    pub category_id: Option<ObjectId>,
    /// `note`, null when absent or not a string (contract §1.1).
    pub note: Option<Arc<str>>,
}

/// One pocket's movements on one day: an entry of a report's
/// `transactions_by_pocket` (contract §5.2), kept for every pocket id a
/// transaction uses for its type, owned by the user or not.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PocketDay {
    /// Σ incomes with this `pocket_to`.
    pub income: Money,
    /// Σ `expense`, `dp` and `withdraw` with this `pocket_from`.
    pub expense: Money,
    /// Σ transfers with this `pocket_to` (a self-transfer included).
    pub transfer_in: Money,
    /// Σ transfers with this `pocket_from` (a self-transfer included).
    pub transfer_out: Money,
    /// Transactions touching the pocket; a self-transfer counts once.
    pub count: i64,
    /// Keyed by (timestamp millis, transaction id): the list's sort order
    /// (contract §8 decision 7).
    pub transactions: VecMap<(i64, SourceId), TxEntry>,
}

impl PocketDay {
    /// net(p, d) of contract §4.1: income − expense + transfer_in −
    /// transfer_out.
    pub fn net(&self) -> Money {
        self.income - self.expense + self.transfer_in - self.transfer_out
    }
}

/// Everything one user's live transactions of one day add up to: the
/// totals of a daily report (contract §5.2), summed over a month for the
/// monthly summary (contract §5.4).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DayAgg {
    /// `transaction_count`: live transactions of the day.
    pub count: i64,
    /// `total_income`: Σ incomes.
    pub income: Money,
    /// `total_expense`: Σ `expense`, `dp` and `withdraw`.
    pub expense: Money,
    /// `total_transfer_in`: Σ transfers that have a `pocket_to`.
    pub transfer_in: Money,
    /// `total_transfer_out`: Σ transfers that have a `pocket_from`.
    pub transfer_out: Money,
    /// By `category_id` (None: no category); sorted for output by the
    /// report builder (contract §5.7).
    pub income_by_category: VecMap<Option<ObjectId>, CategorySum>,
    /// As `income_by_category`, for the outflows.
    pub expense_by_category: VecMap<Option<ObjectId>, CategorySum>,
    /// By pocket id, in hex order: the order of `transactions_by_pocket`.
    pub pockets: VecMap<ObjectId, PocketDay>,
}

/// One user's ledger: the days that have live transactions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserLedger {
    pub days: Days,
    /// The day that days before it were merged into
    /// ([`UserLedger::apply_merged`]), and those days as bits: bit `i` is
    /// set when the day `i` days after it has a live transaction.
    merged: Option<(NaiveDate, u64)>,
}

/// The days of one ledger, in date order, read like a `BTreeMap<NaiveDate,
/// DayAgg>` (`get`, `range`, `iter`, `keys`, `values`, `len`).
///
/// Stored as a window of slots, one per calendar day, around the days
/// seen: finding a transaction's day is an index instead of a walk down a
/// tree whose nodes are cold in memory when users come in random order
/// (the fold's main cost), and a day's sums never move once created. A
/// slot is one pointer, so gaps are cheap; the window spans at most
/// [`Days::MAX_SPAN`] days, and days beyond it (far-off dates) go to an
/// ordered map beside it. Equality is by content.
#[derive(Clone, Default)]
pub struct Days {
    /// Day number (from the common era) of `slots[0]`.
    first: i64,
    slots: Vec<Option<Box<(NaiveDate, DayAgg)>>>,
    /// Days outside the window.
    far: BTreeMap<NaiveDate, DayAgg>,
    len: usize,
}

impl Days {
    /// Most days the window of slots covers (about 11 years; 32 KiB of slots).
    pub const MAX_SPAN: usize = 4096;

    pub fn get(&self, day: &NaiveDate) -> Option<&DayAgg> {
        match self.slot(day_number(*day)) {
            Some(i) => self.slots[i].as_deref().map(|(_, agg)| agg),
            None => self.far.get(day),
        }
    }

    pub fn contains_key(&self, day: &NaiveDate) -> bool {
        self.get(day).is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// (day, sums) in ascending date order.
    pub fn iter(&self) -> DaysIter<'_> {
        self.range(..)
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &NaiveDate> {
        self.iter().map(|(d, _)| d)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &DayAgg> {
        self.iter().map(|(_, a)| a)
    }

    /// The days within `range`, in ascending date order.
    pub fn range(&self, range: impl RangeBounds<NaiveDate>) -> DaysIter<'_> {
        let lo = match range.start_bound() {
            Bound::Included(d) => day_number(*d),
            Bound::Excluded(d) => day_number(*d) + 1,
            Bound::Unbounded => i64::MIN,
        };
        let hi = match range.end_bound() {
            Bound::Included(d) => day_number(*d) + 1,
            Bound::Excluded(d) => day_number(*d),
            Bound::Unbounded => i64::MAX,
        };
        let end = self.first + self.slots.len() as i64;
        let (a, b) = (lo.clamp(self.first, end), hi.clamp(self.first, end));
        let dense = if a < b {
            &self.slots[(a - self.first) as usize..(b - self.first) as usize]
        } else {
            &[]
        };
        // `far` holds no day of the window, so its days below and above the
        // window bracket the dense ones.
        let far = move |d: &NaiveDate| {
            let n = day_number(*d);
            lo <= n && n < hi
        };
        let first = self.first;
        let below = self
            .far
            .iter()
            .filter(move |(d, _)| far(d) && day_number(**d) < first);
        let above = self
            .far
            .iter()
            .filter(move |(d, _)| far(d) && day_number(**d) >= end);
        DaysIter {
            inner: Box::new(
                below
                    .chain(
                        dense
                            .iter()
                            .filter_map(|s| s.as_deref().map(|(d, a)| (d, a))),
                    )
                    .chain(above),
            ),
        }
    }

    /// Index of day number `n` in `slots`, when the window covers it.
    #[inline]
    fn slot(&self, n: i64) -> Option<usize> {
        let i = usize::try_from(n - self.first).ok()?;
        (i < self.slots.len()).then_some(i)
    }

    /// The sums of `day`, created empty when absent.
    fn entry(&mut self, day: NaiveDate) -> &mut DayAgg {
        let n = day_number(day);
        if self.slot(n).is_none() && !self.cover(n) {
            let len = &mut self.len;
            return self.far.entry(day).or_insert_with(|| {
                *len += 1;
                DayAgg::default()
            });
        }
        let i = self.slot(n).expect("covered");
        let slot = &mut self.slots[i];
        if slot.is_none() {
            *slot = Some(Box::new((day, DayAgg::default())));
            self.len += 1;
        }
        &mut slot.as_mut().expect("filled").1
    }

    /// Widens the window to cover day number `n`, if that keeps it within
    /// [`Days::MAX_SPAN`]; days of `far` it now covers move into it.
    fn cover(&mut self, n: i64) -> bool {
        let max = Self::MAX_SPAN as i64;
        if self.slots.is_empty() {
            self.first = n;
            self.slots.push(None);
        } else {
            let end = self.first + self.slots.len() as i64;
            let (lo, hi) = (self.first.min(n), end.max(n + 1));
            if hi - lo > max {
                return false;
            }
            // Grow geometrically, within the limit, on the side of `n`.
            let room = (self.slots.len() as i64).min(max - (hi - lo));
            if n < self.first {
                let grow = (self.first - lo + room) as usize;
                let mut slots = Vec::with_capacity(grow + self.slots.len());
                slots.resize_with(grow, || None);
                slots.append(&mut self.slots);
                self.slots = slots;
                self.first -= grow as i64;
            } else {
                let new_len = (hi - self.first + room) as usize;
                self.slots.resize_with(new_len, || None);
            }
        }
        if !self.far.is_empty() {
            let (first, end) = (self.first, self.first + self.slots.len() as i64);
            let inside: Vec<NaiveDate> = self
                .far
                .keys()
                .filter(|d| (first..end).contains(&day_number(**d)))
                .copied()
                .collect();
            for day in inside {
                if let Some(agg) = self.far.remove(&day) {
                    let i = (day_number(day) - first) as usize;
                    self.slots[i] = Some(Box::new((day, agg)));
                }
            }
        }
        true
    }

    fn remove(&mut self, day: &NaiveDate) {
        let removed = match self.slot(day_number(*day)) {
            Some(i) => self.slots[i].take().is_some(),
            None => self.far.remove(day).is_some(),
        };
        self.len -= usize::from(removed);
        if self.len == 0 {
            *self = Days::default();
        }
    }
}

fn day_number(day: NaiveDate) -> i64 {
    i64::from(day.num_days_from_ce())
}

/// Iterator over [`Days`] in date order.
pub struct DaysIter<'a> {
    inner: Box<dyn DoubleEndedIterator<Item = (&'a NaiveDate, &'a DayAgg)> + 'a>,
}

impl<'a> Iterator for DaysIter<'a> {
    type Item = (&'a NaiveDate, &'a DayAgg);

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}

impl DoubleEndedIterator for DaysIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.inner.next_back()
    }
}

impl<'a> IntoIterator for &'a Days {
    type Item = (&'a NaiveDate, &'a DayAgg);
    type IntoIter = DaysIter<'a>;

    fn into_iter(self) -> DaysIter<'a> {
        self.iter()
    }
}

impl PartialEq for Days {
    fn eq(&self, other: &Days) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl std::fmt::Debug for Days {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A live transaction as the fold reads it, borrowed: a caller that holds
/// transactions in another form (the live window's [`Held`]) folds them
/// without building a [`Transaction`] for each.
///
/// [`Held`]: crate::service::held::Held
#[derive(Clone, Copy, Debug)]
pub struct TxRef<'a> {
    pub id: &'a SourceId,
    pub kind: TxType,
    pub amount: Money,
    pub pocket_from: Option<ObjectId>,
    pub pocket_to: Option<ObjectId>,
    pub category_id: Option<ObjectId>,
    pub note: Option<&'a Arc<str>>,
    /// Business date, milliseconds since the epoch.
    pub date: i64,
}

impl<'a> From<&'a Transaction> for TxRef<'a> {
    fn from(tx: &'a Transaction) -> TxRef<'a> {
        TxRef {
            id: &tx.id,
            kind: tx.kind,
            amount: tx.amount,
            pocket_from: tx.pocket_from,
            pocket_to: tx.pocket_to,
            category_id: tx.category_id,
            note: tx.note.as_ref(),
            date: tx.date,
        }
    }
}

impl UserLedger {
    /// Adds a transaction's contribution; soft-deleted ones contribute nothing.
    pub fn apply(&mut self, cal: &Calendar, tx: &Transaction) {
        if tx.is_live() {
            self.fold(cal.day_of_millis(tx.date), &tx.into(), 1, true);
        }
    }

    /// Removes exactly what [`UserLedger::apply`] added for `tx`.
    pub fn retract(&mut self, cal: &Calendar, tx: &Transaction) {
        if tx.is_live() {
            self.fold(cal.day_of_millis(tx.date), &tx.into(), -1, true);
        }
    }

    /// Applies `tx` on a day already computed by the caller (hot path of
    /// batch scans, which know the day from a sorted stream).
    pub fn apply_on(&mut self, day: NaiveDate, tx: &Transaction) {
        if tx.is_live() {
            self.fold(day, &tx.into(), 1, true);
        }
    }

    /// Applies the live transaction `tx` on `day` (the caller's
    /// [`Calendar::day_of_millis`] of its date), listed in its pockets'
    /// [`PocketDay::transactions`].
    pub fn apply_ref(&mut self, day: NaiveDate, tx: &TxRef) {
        self.fold(day, tx, 1, true);
    }

    /// Applies the live transaction `tx` of `day` on `into`, a day at most
    /// 63 days before it, with every other day merged there: their sums
    /// become one entry, dated `into`, and no transaction is listed.
    ///
    /// Such a ledger builds every document that depends on the merged days
    /// only through sums over all of them: the monthly summary of their
    /// month (its `day_count` counts each merged day,
    /// [`UserLedger::days_in`]), and the documents of later days (balances
    /// and year-to-date sums; contract §4.1, §5.3). It cannot build a
    /// document of a merged day after `into`, nor the daily report of
    /// `into`. The live window merges the days of a month before the first
    /// one it builds: folding them apart cost an entry a day, and summing
    /// those entries again for the month.
    pub fn apply_merged(&mut self, into: NaiveDate, day: NaiveDate, tx: &TxRef) {
        let offset = (day - into).num_days();
        debug_assert!((0..64).contains(&offset), "{day} merged into {into}");
        let (at, bits) = self.merged.get_or_insert((into, 0));
        debug_assert_eq!(*at, into, "one day to merge into");
        *bits |= 1 << offset;
        self.fold(into, tx, 1, false);
    }

    /// How many days with live transactions the entry of `day` stands for:
    /// those merged into it, or 1.
    pub fn days_in(&self, day: NaiveDate) -> i64 {
        match self.merged {
            Some((at, bits)) if at == day => i64::from(bits.count_ones()),
            _ => 1,
        }
    }

    fn fold(&mut self, day: NaiveDate, tx: &TxRef, sign: i64, listed: bool) {
        let agg = self.days.entry(day);
        let amount = if sign > 0 { tx.amount } else { -tx.amount };
        agg.count += sign;
        match tx.kind {
            TxType::Income => {
                agg.income += amount;
                bump(&mut agg.income_by_category, tx.category_id, amount, sign);
            }
            TxType::Expense | TxType::Dp | TxType::Withdraw => {
                agg.expense += amount;
                bump(&mut agg.expense_by_category, tx.category_id, amount, sign);
            }
            TxType::Transfer => {
                if tx.pocket_to.is_some() {
                    agg.transfer_in += amount;
                }
                if tx.pocket_from.is_some() {
                    agg.transfer_out += amount;
                }
            }
        }
        for (pocket, is_from) in touched_pockets(tx) {
            let pd = agg.pockets.entry_or_default(pocket);
            pd.count += sign;
            let self_transfer = tx.pocket_to == tx.pocket_from;
            match tx.kind {
                TxType::Income => pd.income += amount,
                TxType::Expense | TxType::Dp | TxType::Withdraw => pd.expense += amount,
                TxType::Transfer => {
                    if is_from || self_transfer {
                        pd.transfer_out += amount;
                    }
                    if !is_from || self_transfer {
                        pd.transfer_in += amount;
                    }
                }
            }
            if listed {
                let key = (tx.date, tx.id.clone());
                if sign > 0 {
                    let entry = TxEntry {
                        kind: tx.kind,
                        amount: tx.amount,
                        category_id: tx.category_id,
                        note: tx.note.cloned(),
                    };
                    pd.transactions.insert(key, entry);
                } else {
                    pd.transactions.remove(&key);
                }
            }
            if pd.count == 0 {
                agg.pockets.remove(&pocket);
            }
        }
        if agg.count == 0 {
            self.days.remove(&day);
        }
    }

    /// The user's activity in [from, to].
    pub fn range(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> impl Iterator<Item = (&NaiveDate, &DayAgg)> {
        self.days.range(from..=to)
    }
}

/// What a live transaction of `kind` adds to its day's `income` and
/// `expense` (the outflows: `expense`, `dp`, `withdraw`), the sums
/// year-to-date figures add up (contract §5.2, §5.3); transfers add to
/// neither.
pub fn income_and_outflow(kind: TxType, amount: Money) -> (Money, Money) {
    match kind {
        TxType::Income => (amount, Money::ZERO),
        TxType::Expense | TxType::Dp | TxType::Withdraw => (Money::ZERO, amount),
        TxType::Transfer => (Money::ZERO, Money::ZERO),
    }
}

/// The pockets `tx` lists for its type, each once, with whether it is the
/// `pocket_from` (a self-transfer is listed once, as its `pocket_from`).
fn touched_pockets(tx: &TxRef) -> impl Iterator<Item = (ObjectId, bool)> {
    touched(tx.pocket_from, tx.pocket_to)
}

/// [`touched_pockets`] of a transaction's `pocket_from` and `pocket_to`.
fn touched(from: Option<ObjectId>, to: Option<ObjectId>) -> impl Iterator<Item = (ObjectId, bool)> {
    let to = to.filter(|t| Some(*t) != from);
    from.map(|p| (p, true))
        .into_iter()
        .chain(to.map(|p| (p, false)))
}

/// What a live `tx` adds to net(p, d) of each pocket it touches (contract
/// §4.1): the [`PocketDay::net`] of applying it alone. A soft-deleted
/// transaction adds nothing.
pub fn pocket_nets(tx: &Transaction) -> impl Iterator<Item = (ObjectId, Money)> {
    let live = tx.is_live();
    nets(tx.kind, tx.amount, tx.pocket_from, tx.pocket_to).filter(move |_| live)
}

/// [`pocket_nets`] of a live transaction given by its fields: its type,
/// amount, `pocket_from` and `pocket_to` (the live window holds
/// transactions in a compact form and needs no [`Transaction`] for this).
pub fn nets(
    kind: TxType,
    amount: Money,
    from: Option<ObjectId>,
    to: Option<ObjectId>,
) -> impl Iterator<Item = (ObjectId, Money)> {
    let self_transfer = to == from;
    touched(from, to).map(move |(pocket, is_from)| {
        let net = match kind {
            TxType::Income => amount,
            TxType::Expense | TxType::Dp | TxType::Withdraw => -amount,
            TxType::Transfer if self_transfer => Money::ZERO,
            TxType::Transfer if is_from => -amount,
            TxType::Transfer => amount,
        };
        (pocket, net)
    })
}

fn bump(
    map: &mut VecMap<Option<ObjectId>, CategorySum>,
    key: Option<ObjectId>,
    amount: Money,
    sign: i64,
) {
    let entry = map.entry_or_default(key);
    entry.amount += amount;
    entry.count += sign;
    if entry.count == 0 {
        map.remove(&key);
    }
}

/// Closing balances per pocket (contract §4.1): closing(p, D) = B(p) −
/// Σ net(p, d) over the days d after D, answered in O(log days) from suffix
/// sums.
#[derive(Debug, Default)]
pub struct Balances {
    /// Per owned, valid pocket: its id, its balance B(p) and (day, Σ net
    /// over days ≥ day), ascending. A user has a few pockets: a vector
    /// searched in order costs less than a hash map to build and to ask.
    pockets: Vec<(ObjectId, Money, Suffix)>,
}

/// (day, Σ net(p, d) over the days d ≥ day) of one pocket, by day.
type Suffix = Vec<(NaiveDate, Money)>;

impl Balances {
    /// `pockets` are the user's own pockets; invalid ones are skipped.
    pub fn new<'a>(ledger: &UserLedger, pockets: impl IntoIterator<Item = &'a Pocket>) -> Balances {
        let days = ledger.days.len();
        let mut out: Vec<(ObjectId, Money, Suffix)> = Vec::new();
        for p in pockets {
            if let Ok(balance) = p.balance {
                match out.iter_mut().find(|(id, _, _)| *id == p.id) {
                    Some(seen) => seen.1 = balance,
                    None => out.push((p.id, balance, Vec::with_capacity(days))),
                }
            }
        }
        for (day, agg) in ledger.days.iter().rev() {
            for (pid, pd) in &agg.pockets {
                if let Some((_, _, suffix)) = out.iter_mut().find(|(id, _, _)| id == pid) {
                    let after = suffix.last().map_or(Money::ZERO, |(_, s)| *s);
                    suffix.push((*day, after + pd.net()));
                }
            }
        }
        for (_, _, suffix) in &mut out {
            suffix.reverse();
        }
        Balances { pockets: out }
    }

    /// closing(p, D), or `None` for a pocket that is not the user's valid pocket.
    pub fn closing(&self, pocket: &ObjectId, day: NaiveDate) -> Option<Money> {
        let (_, balance, suffix) = self.pockets.iter().find(|(id, _, _)| id == pocket)?;
        let i = suffix.partition_point(|(d, _)| *d <= day);
        Some(*balance - suffix.get(i).map_or(Money::ZERO, |(_, s)| *s))
    }
}

/// Income and expense from 1 January of `from`'s year up to (not
/// including) `from`: what a ledger that starts at `from` cannot know.
/// Taken from an already final document (the previous day's snapshot or
/// the previous month's summary), it spares re-reading the year
/// (contract §7.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct YtdBaseline {
    /// The first day of the ledger the baseline completes.
    pub from: NaiveDate,
    /// Σ incomes from 1 January of `from`'s year to the day before `from`.
    pub income: Money,
    /// Σ outflows (`expense`, `dp`, `withdraw`) over the same days.
    pub expense: Money,
}

impl YtdBaseline {
    /// The baseline of a ledger that starts at `from`, computed from a
    /// ledger (with its own baseline, if it starts after 1 January) that
    /// holds the days before `from`.
    pub fn at(from: NaiveDate, ledger: &UserLedger, baseline: Option<YtdBaseline>) -> YtdBaseline {
        let (income, expense) = match from.pred_opt() {
            Some(before) if before.year() == from.year() => {
                YearToDate::with_baseline(ledger, baseline).through(before)
            }
            _ => (Money::ZERO, Money::ZERO),
        };
        YtdBaseline {
            from,
            income,
            expense,
        }
    }
}

/// Year-to-date income and expense through any day, from prefix sums:
/// `ytd_income` and `ytd_expense` of snapshots and summaries (contract
/// §5.3, §5.4).
#[derive(Debug, Default)]
pub struct YearToDate {
    /// (day, Σ income, Σ expense) from 1 January of the day's year through day.
    prefix: Vec<(NaiveDate, Money, Money)>,
    baseline: Option<YtdBaseline>,
}

impl YearToDate {
    pub fn new(ledger: &UserLedger) -> YearToDate {
        YearToDate::with_baseline(ledger, None)
    }

    /// Prefix sums over `ledger`, starting the baseline's year from it.
    pub fn with_baseline(ledger: &UserLedger, baseline: Option<YtdBaseline>) -> YearToDate {
        let mut ytd = YearToDate {
            prefix: Vec::with_capacity(ledger.days.len()),
            baseline,
        };
        for (day, agg) in &ledger.days {
            let (inc, exp) = match ytd.prefix.last() {
                Some((d, i, e)) if d.year() == day.year() => (*i, *e),
                _ => ytd.start_of_year(*day),
            };
            ytd.prefix.push((*day, inc + agg.income, exp + agg.expense));
        }
        ytd
    }

    fn start_of_year(&self, day: NaiveDate) -> (Money, Money) {
        match self.baseline {
            Some(b) if b.from.year() == day.year() => (b.income, b.expense),
            _ => (Money::ZERO, Money::ZERO),
        }
    }

    /// (income, expense) from 1 January of `day`'s year through `day`.
    pub fn through(&self, day: NaiveDate) -> (Money, Money) {
        let i = self.prefix.partition_point(|(d, _, _)| *d <= day);
        match i.checked_sub(1).map(|i| self.prefix[i]) {
            Some((d, inc, exp)) if d.year() == day.year() => (inc, exp),
            _ => self.start_of_year(day),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::source::SourceId;

    fn tx(
        kind: TxType,
        amount: &str,
        from: Option<ObjectId>,
        to: Option<ObjectId>,
        date: i64,
    ) -> Transaction {
        Transaction {
            id: SourceId::Oid(ObjectId::new()),
            user_id: ObjectId::new(),
            kind,
            amount: amount.parse().unwrap(),
            pocket_from: from,
            pocket_to: to,
            category_id: None,
            note: None,
            date,
            deleted: false,
        }
    }

    #[test]
    fn year_to_date_continues_from_a_baseline_within_its_year_only() {
        let cal = Calendar::from_name("UTC").unwrap();
        let day = |s: &str| s.parse::<NaiveDate>().unwrap();
        let at = |s: &str| cal.day_start(day(s)).timestamp_millis() + 3_600_000;
        let mut l = UserLedger::default();
        l.apply(
            &cal,
            &tx(TxType::Income, "10", None, None, at("2026-12-30")),
        );
        l.apply(
            &cal,
            &tx(TxType::Expense, "4", None, None, at("2027-01-02")),
        );
        let m = |s: &str| s.parse::<Money>().unwrap();
        let base = YtdBaseline {
            from: day("2026-12-01"),
            income: m("100"),
            expense: m("50"),
        };
        let ytd = YearToDate::with_baseline(&l, Some(base));
        assert_eq!(ytd.through(day("2026-12-01")), (m("100"), m("50")));
        assert_eq!(ytd.through(day("2026-12-31")), (m("110"), m("50")));
        assert_eq!(ytd.through(day("2027-01-01")), (Money::ZERO, Money::ZERO));
        assert_eq!(ytd.through(day("2027-01-05")), (Money::ZERO, m("4")));
    }

    #[test]
    fn income_and_outflow_are_what_a_day_totals_add() {
        let cal = Calendar::from_name("UTC").unwrap();
        let p = Some(ObjectId::new());
        for kind in [
            TxType::Income,
            TxType::Expense,
            TxType::Dp,
            TxType::Withdraw,
            TxType::Transfer,
        ] {
            let t = tx(kind, "12.5", p, p, 0);
            let mut l = UserLedger::default();
            l.apply(&cal, &t);
            let agg = l.days.values().next().unwrap();
            assert_eq!(
                income_and_outflow(kind, t.amount),
                (agg.income, agg.expense),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_self_transfer_counts_once_and_nets_zero() {
        let cal = Calendar::from_name("UTC").unwrap();
        let p = ObjectId::new();
        let mut l = UserLedger::default();
        l.apply(&cal, &tx(TxType::Transfer, "10", Some(p), Some(p), 0));
        let agg = &l.days.values().next().unwrap();
        let pd = &agg.pockets[&p];
        assert_eq!((pd.count, pd.transactions.len()), (1, 1));
        assert_eq!(pd.transfer_in, "10".parse().unwrap());
        assert_eq!(pd.transfer_out, "10".parse().unwrap());
        assert_eq!(pd.net(), Money::ZERO);
        assert_eq!(agg.transfer_in, agg.transfer_out);
    }

    #[test]
    fn retract_restores_the_empty_ledger() {
        let cal = Calendar::from_name("UTC").unwrap();
        let mut l = UserLedger::default();
        let t = tx(
            TxType::Expense,
            "3.30",
            Some(ObjectId::new()),
            None,
            86_400_000,
        );
        l.apply(&cal, &t);
        assert_eq!(l.days.len(), 1);
        l.retract(&cal, &t);
        assert_eq!(l, UserLedger::default());
    }

    #[test]
    fn closing_balances_subtract_later_days_only() {
        let cal = Calendar::from_name("UTC").unwrap();
        let p = ObjectId::new();
        let day = 86_400_000;
        let mut l = UserLedger::default();
        l.apply(&cal, &tx(TxType::Income, "100", None, Some(p), day));
        l.apply(&cal, &tx(TxType::Expense, "30", Some(p), None, 3 * day));
        let pocket = Pocket {
            id: p,
            user_id: Some(ObjectId::new()),
            name: None,
            kind: None,
            balance: Ok("70".parse().unwrap()),
            created_at: None,
            deleted_at: None,
        };
        let b = Balances::new(&l, [&pocket]);
        let d = |n: i64| cal.day_of_millis(n * day);
        assert_eq!(b.closing(&p, d(0)), Some(Money::ZERO));
        assert_eq!(b.closing(&p, d(1)), Some("100".parse().unwrap()));
        assert_eq!(b.closing(&p, d(2)), Some("100".parse().unwrap()));
        assert_eq!(b.closing(&p, d(3)), Some("70".parse().unwrap()));
        assert_eq!(b.closing(&p, d(9)), Some("70".parse().unwrap()));
        assert_eq!(b.closing(&ObjectId::new(), d(9)), None);
    }

    /// `Days` behaves as the ordered map it stands for: against a BTreeMap
    /// model, with days near each other, far apart (beyond the window) and
    /// windows that grow both ways, through inserts and removals.
    #[test]
    fn days_behave_as_an_ordered_map() {
        use std::collections::BTreeMap;
        let mut rng = crate::core::rng::Rng::new(5);
        let base: NaiveDate = "2026-01-01".parse().unwrap();
        for round in 0..100 {
            let mut days = Days::default();
            let mut model: BTreeMap<NaiveDate, i64> = BTreeMap::new();
            let spread = [10, 100, 3000, 5000, 20_000][round % 5];
            for step in 0..200 {
                let offset = rng.below(2 * spread) as i64 - spread as i64;
                let day = base + chrono::Duration::days(offset);
                if rng.chance(30) && !model.is_empty() {
                    let k = *model
                        .keys()
                        .nth(rng.below(model.len() as u64) as usize)
                        .unwrap();
                    model.remove(&k);
                    days.remove(&k);
                } else {
                    *model.entry(day).or_default() += 1;
                    days.entry(day).count += 1;
                }
                assert_eq!(days.len(), model.len(), "round {round} step {step}");
                let got: Vec<(NaiveDate, i64)> = days.iter().map(|(d, a)| (*d, a.count)).collect();
                let want: Vec<(NaiveDate, i64)> = model.iter().map(|(d, c)| (*d, *c)).collect();
                assert_eq!(got, want, "round {round} step {step}");
                let back: Vec<NaiveDate> = days.keys().rev().copied().collect();
                assert_eq!(back, model.keys().rev().copied().collect::<Vec<_>>());
                let (a, b) = (
                    day - chrono::Duration::days(7),
                    day + chrono::Duration::days(40),
                );
                let got: Vec<NaiveDate> = days.range(a..=b).map(|(d, _)| *d).collect();
                let want: Vec<NaiveDate> = model.range(a..=b).map(|(d, _)| *d).collect();
                assert_eq!(got, want);
                let got: Vec<NaiveDate> = days.range(a..b).map(|(d, _)| *d).collect();
                assert_eq!(got, model.range(a..b).map(|(d, _)| *d).collect::<Vec<_>>());
                assert_eq!(days.get(&day).map(|a| a.count), model.get(&day).copied());
                assert!(days.slots.len() <= Days::MAX_SPAN);
            }
            for k in model.keys().copied().collect::<Vec<_>>() {
                days.remove(&k);
            }
            assert_eq!(days, Days::default());
            assert!(days.is_empty() && days.slots.is_empty() && days.far.is_empty());
        }
    }
}
