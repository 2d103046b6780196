//! Builders of the three output documents (`docs/data-contract.md` §5.2
//! daily report, §5.3 snapshot, §5.4 monthly summary) — the one place that
//! knows the output schema.
//!
//! A builder turns one user's ledger, pockets and the category labels into
//! the *content* of a document: keys, every number, labels and the final
//! flag. The bookkeeping fields (`time_zone`, `revision`, `restatements`,
//! `generated_at`, `created_at`, `updated_at`, `finalized_at`) are the
//! store's business (contract §5.1, `crate::plan::write`) and are listed in
//! [`BOOKKEEPING`].
//!
//! Conventions of every builder (contract §2, §5.1, §5.7):
//! - money is Decimal128 holding the exact value, in the unit coin stores,
//!   trailing zeros removed; nothing is rounded here except
//!   `percent_of_total` (pocket balances arrive already rounded to cents
//!   by the decoder, contract §2.3);
//! - counts are int64; a null is written as BSON null, never omitted;
//! - every array has the order of contract §5.7; an empty one is `[]`;
//! - a builder returns `None` exactly when the document must not exist
//!   (contract §5.8), and the caller then deletes a stored one.

use bson::oid::ObjectId;
use bson::Document;
use chrono::NaiveDate;

use crate::core::calendar::{
    self, date_label, first_of_month, first_of_year, last_of_month, Calendar,
};
use crate::core::ledger::{
    Balances, CategorySum, DayAgg, PocketDay, UserLedger, YearToDate, YtdBaseline,
};
use crate::core::money::Money;
use crate::core::out::{DocOut, Out};
use crate::core::source::{Pocket, SourceId};
use crate::core::vecmap::VecMap;

/// Most transactions listed per pocket in a daily report: the first 500 in
/// list order, then `transactions_truncated: true` (contract §5.2).
pub const MAX_LISTED: usize = 500;

/// Fields that are not content: ignored by comparisons (contract §7.3),
/// kept by the store (contract §5.1).
pub const BOOKKEEPING: [&str; 8] = [
    "_id",
    "time_zone",
    "revision",
    "restatements",
    "generated_at",
    "created_at",
    "updated_at",
    "finalized_at",
];

/// The three kinds of output document (contract §5.2–§5.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Report,
    Snapshot,
    Monthly,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Report, Kind::Snapshot, Kind::Monthly];

    pub fn collection(self) -> &'static str {
        match self {
            Kind::Report => "daily_financial_reports",
            Kind::Snapshot => "daily_financial_snapshots",
            Kind::Monthly => "monthly_financial_summaries",
        }
    }

    /// The date field of the unique key (`user_id`, this): the period as a
    /// date label, 00:00:00 UTC of the local date (contract §3); for
    /// `month`, its 1st.
    pub fn date_field(self) -> &'static str {
        match self {
            Kind::Report => "report_date",
            Kind::Snapshot => "snapshot_date",
            Kind::Monthly => "month",
        }
    }

    /// The flag that says the period is closed (contract §6): content, so
    /// compared by reconcile.
    pub fn final_field(self) -> &'static str {
        match self {
            Kind::Report => "is_final",
            Kind::Snapshot | Kind::Monthly => "is_complete",
        }
    }

    /// Name used on the command line (`--kinds reports,snapshots,monthly`).
    pub fn cli_name(self) -> &'static str {
        match self {
            Kind::Report => "reports",
            Kind::Snapshot => "snapshots",
            Kind::Monthly => "monthly",
        }
    }

    pub fn from_cli_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.cli_name() == s)
    }
}

/// Category labels (contract §1.4): every `user_categories` `_id` that is an
/// ObjectId, with its `name` (`Unknown` when it has no string name),
/// whoever owns it and deleted or not.
///
/// Hashed with foldhash: every category entry of every document built looks
/// its label up, and SipHash made that 1.3% of the live replay.
#[derive(Clone, Debug, Default)]
pub struct Categories(pub foldhash::HashMap<ObjectId, String>);

impl Categories {
    /// The `category_name` written for `id`: `Uncategorized` for no
    /// category, `Unknown` for an id no category has (contract §1.4).
    pub fn label(&self, id: Option<ObjectId>) -> &str {
        match id {
            None => "Uncategorized",
            Some(id) => self.0.get(&id).map_or("Unknown", String::as_str),
        }
    }
}

/// One user's data, ready to build any document from.
pub struct UserView<'a> {
    /// The user: `user_id` of every document built.
    pub user_id: ObjectId,
    /// The user's live transactions folded by day (contract §1.2, §4.1).
    pub ledger: &'a UserLedger,
    /// The user's own pockets (valid or not), sorted by id: the pockets
    /// whose balances count (contract §1.3) and whose labels are written
    /// (contract §1.4). References, not copies: the live path builds a
    /// view per user computed, and copying a user's pockets into a map cost
    /// 2.5% of its replay.
    pockets: Vec<&'a Pocket>,
    /// Category labels (contract §1.4).
    pub categories: &'a Categories,
    /// The reporting zone: day and month boundaries (contract §3).
    pub cal: &'a Calendar,
    /// closing(p, D) of every owned, valid pocket (contract §4.1).
    balances: Balances,
    /// Year-to-date income and outflow through any day (contract §5.3).
    ytd: YearToDate,
}

impl<'a> UserView<'a> {
    pub fn new(
        user_id: ObjectId,
        ledger: &'a UserLedger,
        pockets: impl IntoIterator<Item = &'a Pocket>,
        categories: &'a Categories,
        cal: &'a Calendar,
    ) -> UserView<'a> {
        let mut pockets: Vec<&Pocket> = pockets.into_iter().collect();
        pockets.sort_by_key(|p| p.id);
        debug_assert!(
            pockets.windows(2).all(|w| w[0].id != w[1].id),
            "a pocket twice"
        );
        UserView {
            user_id,
            ledger,
            balances: Balances::new(ledger, pockets.iter().copied()),
            pockets,
            categories,
            cal,
            ytd: YearToDate::new(ledger),
        }
    }

    /// For a ledger that starts at `baseline.from`: year-to-date figures
    /// continue from the baseline instead of from zero (contract §7.2).
    pub fn with_ytd_baseline(mut self, baseline: YtdBaseline) -> UserView<'a> {
        self.ytd = YearToDate::with_baseline(self.ledger, Some(baseline));
        self
    }

    /// The user's pockets that count on `day` (contract §1.3), by id.
    fn counting_pockets(&self, day: NaiveDate) -> impl Iterator<Item = &'a Pocket> + '_ {
        let end = self.cal.day_end(day).timestamp_millis();
        self.pockets
            .iter()
            .copied()
            .filter(move |p| p.counts_before(end))
    }

    fn closing(&self, pocket: &ObjectId, day: NaiveDate) -> Money {
        self.balances.closing(pocket, day).unwrap_or(Money::ZERO)
    }

    fn net(&self, pocket: &ObjectId, day: NaiveDate) -> Money {
        self.ledger
            .days
            .get(&day)
            .and_then(|a| a.pockets.get(pocket))
            .map_or(Money::ZERO, PocketDay::net)
    }

    /// User-level (opening, closing) of `day`: sums over counting pockets,
    /// 0 when none counts (contract §4.2).
    fn user_balances(&self, day: NaiveDate) -> (Money, Money) {
        let mut opening = Money::ZERO;
        let mut closing = Money::ZERO;
        for p in self.counting_pockets(day) {
            let c = self.closing(&p.id, day);
            closing += c;
            opening += c - self.net(&p.id, day);
        }
        (opening, closing)
    }

    /// The user's pocket `id`, if it is one.
    fn pocket(&self, id: &ObjectId) -> Option<&'a Pocket> {
        let i = self.pockets.binary_search_by_key(id, |p| p.id).ok()?;
        Some(self.pockets[i])
    }

    /// (name, type) labels of a pocket named by one of the user's
    /// transactions: its own labels (null when missing) for a pocket of the
    /// user, `Unknown` and `""` for any other id (contract §1.4).
    fn pocket_labels(&self, pocket: &ObjectId) -> (Option<&'a str>, Option<&'a str>) {
        match self.pocket(pocket) {
            Some(p) => (p.name.as_deref(), p.kind.as_deref()),
            None => (Some("Unknown"), Some("")),
        }
    }

    /// The fields a pocket entry of a daily report and of a monthly summary
    /// share, in their stored order: the pocket, its labels and its flows.
    fn pocket_entry<O: Out>(&self, out: &mut O, pocket: &ObjectId, pd: &PocketDay) {
        let (name, kind) = self.pocket_labels(pocket);
        out.oid("pocket_id", *pocket);
        out.opt_string("pocket_name", name);
        out.opt_string("pocket_type", kind);
        out.money("income", pd.income);
        out.money("expense", pd.expense);
        out.money("transfer_in", pd.transfer_in);
        out.money("transfer_out", pd.transfer_out);
    }

    /// A category list (contract §5.2, §5.4), one entry per category:
    /// `category_id` (null for none), `category_name` (contract §1.4),
    /// `amount` (exact sum), `percent_of_total` (monthly only, when `total`
    /// is given: contract §2.3) and `transaction_count`. Sorted by `amount`
    /// descending, then `category_id` hex ascending with null last
    /// (contract §5.7).
    fn category_entries<O: Out>(
        &self,
        out: &mut O,
        key: &str,
        sums: &VecMap<Option<ObjectId>, CategorySum>,
        total: Option<Money>,
    ) {
        let entry = |out: &mut O, id: &Option<ObjectId>, sum: &CategorySum| {
            out.begin_entry();
            out.opt_oid("category_id", *id);
            out.string("category_name", self.categories.label(*id));
            out.money("amount", sum.amount);
            if let Some(total) = total {
                out.double("percent_of_total", sum.amount.percent_of(total));
            }
            out.int64("transaction_count", sum.count);
            out.end();
        };
        out.begin_array(key);
        if sums.len() == 1 {
            // Most lists of a day: no vector to sort.
            sums.iter().for_each(|(id, sum)| entry(out, id, sum));
        } else {
            let mut rows: Vec<(&Option<ObjectId>, &CategorySum)> = sums.iter().collect();
            rows.sort_by(|(ia, a), (ib, b)| {
                b.amount
                    .cmp(&a.amount)
                    .then_with(|| cmp_id_null_last(ia, ib))
            });
            rows.into_iter().for_each(|(id, sum)| entry(out, id, sum));
        }
        out.end();
    }

    /// The `daily_financial_reports` document of `day` (contract §5.2).
    ///
    /// Exists exactly when the user has a live transaction on `day`
    /// (`None` otherwise, contract §5.2, §5.8). `closed` is `is_final`:
    /// true for a day before today or one whose 23:59 step has run
    /// (contract §6). Fields, money as exact Decimal128 (contract §2.4):
    /// - `user_id`; `report_date`: `day` as a date label (contract §3);
    /// - `opening_balance`, `closing_balance`: the user's opening(D) and
    ///   closing(D), summed over the pockets counting on `day`, 0 when none
    ///   does (contract §4.2); pocket balances are cents (contract §2.3),
    ///   the rest exact; `net_change` = closing − opening;
    /// - `total_income`: Σ incomes; `total_expense`: Σ `expense`, `dp` and
    ///   `withdraw`; `total_transfer_in` / `total_transfer_out`: Σ transfers
    ///   with a `pocket_to` / a `pocket_from`, whoever owns the pocket;
    ///   `transaction_count`: live transactions of the day (int64);
    /// - `expense_by_category`, `income_by_category`: see
    ///   `category_entries` (transfers in neither);
    /// - `transactions_by_pocket`: one entry per pocket id a transaction of
    ///   the day uses for its type (contract §1.2), sorted by `pocket_id`
    ///   hex: `pocket_name`, `pocket_type` (contract §1.4); `income`,
    ///   `expense`, `transfer_in`, `transfer_out` (a self-transfer adds to
    ///   both); `opening_balance`, `closing_balance` = opening(p, D),
    ///   closing(p, D), null when p is not the user's or does not count on
    ///   `day` (contract §4.1); `transaction_count` (a self-transfer once);
    ///   `transactions`: `{transaction_id, type (canonical), amount,
    ///   category_id, category_name, note, timestamp}` sorted by timestamp
    ///   then id (contract §8 decision 7), the first [`MAX_LISTED`];
    ///   `transactions_truncated` when more touched p;
    /// - `is_final` (contract §6).
    pub fn daily_report(&self, day: NaiveDate, closed: bool) -> Option<Document> {
        self.daily_report_as::<DocOut>(day, closed)
    }

    /// [`UserView::daily_report`], written by `O`.
    pub fn daily_report_as<O: Out>(&self, day: NaiveDate, closed: bool) -> Option<O::Doc> {
        let agg = self.ledger.days.get(&day)?;
        let (opening, closing) = self.user_balances(day);
        let day_end = self.cal.day_end(day).timestamp_millis();
        // Under 2 KiB: 97% of the live bench's reports (mean 1.2 KiB).
        let mut out = O::with_capacity(2048);
        out.oid("user_id", self.user_id);
        out.datetime("report_date", date_label(day));
        out.money("opening_balance", opening);
        out.money("closing_balance", closing);
        out.money("net_change", closing - opening);
        out.money("total_income", agg.income);
        out.money("total_expense", agg.expense);
        out.money("total_transfer_in", agg.transfer_in);
        out.money("total_transfer_out", agg.transfer_out);
        out.int64("transaction_count", agg.count);
        self.category_entries(
            &mut out,
            "expense_by_category",
            &agg.expense_by_category,
            None,
        );
        self.category_entries(
            &mut out,
            "income_by_category",
            &agg.income_by_category,
            None,
        );
        out.begin_array("transactions_by_pocket");
        for (pid, pd) in agg.pockets.iter() {
            out.begin_entry();
            self.pocket_entry(&mut out, pid, pd);
            if self.pocket(pid).is_some_and(|p| p.counts_before(day_end)) {
                let c = self.closing(pid, day);
                out.money("opening_balance", c - pd.net());
                out.money("closing_balance", c);
            } else {
                out.null("opening_balance");
                out.null("closing_balance");
            }
            out.int64("transaction_count", pd.count);
            out.begin_array("transactions");
            for ((ts, id), e) in pd.transactions.iter().take(MAX_LISTED) {
                out.begin_entry();
                match id {
                    SourceId::Oid(o) => out.oid("transaction_id", *o),
                    other => out.bson("transaction_id", &other.to_bson()),
                }
                out.string("type", e.kind.as_str());
                out.money("amount", e.amount);
                out.opt_oid("category_id", e.category_id);
                out.string("category_name", self.categories.label(e.category_id));
                out.opt_string("note", e.note.as_deref());
                out.datetime("timestamp", bson::DateTime::from_millis(*ts));
                out.end();
            }
            out.end();
            out.boolean("transactions_truncated", pd.transactions.len() > MAX_LISTED);
            out.end();
        }
        out.end();
        out.boolean("is_final", closed);
        Some(out.finish())
    }

    /// The `daily_financial_snapshots` document of `day` (contract §5.3),
    /// for a closed day only: the caller never asks for today or later.
    ///
    /// `None` when no pocket of the user counts on `day` (contract §5.8).
    /// Fields, money as exact Decimal128 (contract §2.4):
    /// - `user_id`; `snapshot_date`: `day` as a date label (contract §3);
    /// - `pocket_balances`: one entry per pocket counting on `day`
    ///   (contract §1.3), sorted by `pocket_id` hex: `pocket_name`,
    ///   `pocket_type` (null when missing), `balance` = closing(p, D) and
    ///   `balance_change` = net(p, D) (contract §4.1; cents, since B(p) is);
    /// - `total_balance`: Σ `balance`, the user's closing(D) (contract §4.2);
    /// - `total_income`, `total_expense`, `total_transfer_in`,
    ///   `total_transfer_out`, `transaction_count`: as the daily report of
    ///   `day`, 0 when it has none;
    /// - `ytd_income`, `ytd_expense`: Σ incomes and Σ outflows from
    ///   1 January of `day`'s year through `day`; `ytd_net` = their
    ///   difference (contract §3, §5.3);
    /// - `is_complete`: always true (contract §6).
    pub fn snapshot(&self, day: NaiveDate) -> Option<Document> {
        self.snapshot_as::<DocOut>(day)
    }

    /// [`UserView::snapshot`], written by `O`.
    pub fn snapshot_as<O: Out>(&self, day: NaiveDate) -> Option<O::Doc> {
        let balances: Vec<(&Pocket, Money)> = self
            .counting_pockets(day)
            .map(|p| (p, self.closing(&p.id, day)))
            .collect();
        if balances.is_empty() {
            return None;
        }
        let total = balances.iter().map(|(_, b)| *b).sum::<Money>();
        let empty = DayAgg::default();
        let agg = self.ledger.days.get(&day).unwrap_or(&empty);
        let (ytd_income, ytd_expense) = self.ytd.through(day);
        let mut out = O::new();
        out.oid("user_id", self.user_id);
        out.datetime("snapshot_date", date_label(day));
        out.begin_array("pocket_balances");
        for (p, balance) in balances {
            out.begin_entry();
            out.oid("pocket_id", p.id);
            out.opt_string("pocket_name", p.name.as_deref());
            out.opt_string("pocket_type", p.kind.as_deref());
            out.money("balance", balance);
            out.money("balance_change", self.net(&p.id, day));
            out.end();
        }
        out.end();
        out.money("total_balance", total);
        out.money("total_income", agg.income);
        out.money("total_expense", agg.expense);
        out.money("total_transfer_in", agg.transfer_in);
        out.money("total_transfer_out", agg.transfer_out);
        out.int64("transaction_count", agg.count);
        out.money("ytd_income", ytd_income);
        out.money("ytd_expense", ytd_expense);
        out.money("ytd_net", ytd_income - ytd_expense);
        out.boolean("is_complete", true);
        Some(out.finish())
    }

    /// The `monthly_financial_summaries` document of the month containing
    /// `month` (contract §5.4). `closed` is `is_complete`: the month's last
    /// day is before today (contract §6).
    ///
    /// `None` when the user has no live transaction in the month and, for a
    /// closed month, no pocket counting on its last day (contract §5.8).
    /// Fields, money as exact Decimal128 (contract §2.4):
    /// - `user_id`; `month`: the month's 1st as a date label (contract §3);
    /// - `income`, `expense`, `transfer_in`, `transfer_out`: the daily
    ///   totals of contract §5.2 summed over the month; `net` = income −
    ///   expense;
    /// - `opening_balance`: the user's opening on the month's first day;
    ///   `closing_balance`: the user's closing on its last day, even a
    ///   future one (contract §4.2);
    /// - `expense_by_category`, `income_by_category`: see
    ///   `category_entries`, with `percent_of_total` of the month's
    ///   `expense` or `income`, rounded half-even to 2 decimals and stored
    ///   as a double (contract §2.3);
    /// - `by_pocket`: one entry per pocket id a transaction of the month
    ///   uses for its type, sorted by `pocket_id` hex: `pocket_name`,
    ///   `pocket_type` (contract §1.4), `income`, `expense`, `transfer_in`,
    ///   `transfer_out` and `net` = income − expense + transfer_in −
    ///   transfer_out;
    /// - `ytd_income`, `ytd_expense`, `ytd_net`: from 1 January through the
    ///   month's last day, future-dated transactions included;
    /// - `day_count`: days of the month with a live transaction;
    ///   `transaction_count`: its live transactions (both int64);
    /// - `is_complete` (contract §6).
    pub fn monthly(&self, month: NaiveDate, closed: bool) -> Option<Document> {
        self.monthly_as::<DocOut>(month, closed)
    }

    /// [`UserView::monthly`], written by `O`.
    pub fn monthly_as<O: Out>(&self, month: NaiveDate, closed: bool) -> Option<O::Doc> {
        let first = first_of_month(month);
        let last = last_of_month(month);
        let mut total = DayAgg::default();
        // In pocket id order, as `DayAgg::pockets`.
        let mut by_pocket: VecMap<ObjectId, PocketDay> = VecMap::default();
        let mut day_count: i64 = 0;
        for (day, agg) in self.ledger.range(first, last) {
            day_count += self.ledger.days_in(*day);
            total.count += agg.count;
            total.income += agg.income;
            total.expense += agg.expense;
            total.transfer_in += agg.transfer_in;
            total.transfer_out += agg.transfer_out;
            merge_categories(&mut total.income_by_category, &agg.income_by_category);
            merge_categories(&mut total.expense_by_category, &agg.expense_by_category);
            for (pid, pd) in &agg.pockets {
                let acc = by_pocket.entry_or_default(*pid);
                acc.income += pd.income;
                acc.expense += pd.expense;
                acc.transfer_in += pd.transfer_in;
                acc.transfer_out += pd.transfer_out;
            }
        }
        if day_count == 0 && !(closed && self.counting_pockets(last).next().is_some()) {
            return None;
        }
        let (opening, _) = self.user_balances(first);
        let (_, closing) = self.user_balances(last);
        let (ytd_income, ytd_expense) = self.ytd.through(last);
        // Under 4 KiB: every summary of the live bench (mean 2.8 KiB).
        let mut out = O::with_capacity(4096);
        out.oid("user_id", self.user_id);
        out.datetime("month", date_label(first));
        out.money("income", total.income);
        out.money("expense", total.expense);
        out.money("transfer_in", total.transfer_in);
        out.money("transfer_out", total.transfer_out);
        out.money("net", total.income - total.expense);
        out.money("opening_balance", opening);
        out.money("closing_balance", closing);
        let (expense, income) = (Some(total.expense), Some(total.income));
        self.category_entries(
            &mut out,
            "expense_by_category",
            &total.expense_by_category,
            expense,
        );
        self.category_entries(
            &mut out,
            "income_by_category",
            &total.income_by_category,
            income,
        );
        out.begin_array("by_pocket");
        for (pid, pd) in by_pocket.iter() {
            out.begin_entry();
            self.pocket_entry(&mut out, pid, pd);
            out.money("net", pd.net());
            out.end();
        }
        out.end();
        out.money("ytd_income", ytd_income);
        out.money("ytd_expense", ytd_expense);
        out.money("ytd_net", ytd_income - ytd_expense);
        out.int64("day_count", day_count);
        out.int64("transaction_count", total.count);
        out.boolean("is_complete", closed);
        Some(out.finish())
    }

    /// Every document of `kinds` for the periods of [from, to] (months: every
    /// month intersecting it; snapshots: closed days only), keyed by (kind,
    /// period date), as contract §7.1 defines a range. `today` is the first
    /// day that is not closed.
    pub fn build_range(
        &self,
        kinds: &[Kind],
        from: NaiveDate,
        to: NaiveDate,
        today: NaiveDate,
    ) -> Vec<(Kind, NaiveDate, Document)> {
        self.build_range_as::<DocOut>(kinds, from, to, today, today)
    }

    /// [`UserView::build_range`], written by `O`; the daily reports of days
    /// before `reports_open_from` are final too (their 23:59 step has run,
    /// contract §6), so that content written as bytes need not be changed
    /// afterwards.
    pub fn build_range_as<O: Out>(
        &self,
        kinds: &[Kind],
        from: NaiveDate,
        to: NaiveDate,
        today: NaiveDate,
        reports_open_from: NaiveDate,
    ) -> Vec<(Kind, NaiveDate, O::Doc)> {
        let reports_open_from = reports_open_from.max(today);
        let mut out = Vec::new();
        for &kind in kinds {
            match kind {
                Kind::Report => {
                    for (day, _) in self.ledger.range(from, to) {
                        out.extend(
                            self.daily_report_as::<O>(*day, *day < reports_open_from)
                                .map(|d| (kind, *day, d)),
                        );
                    }
                }
                Kind::Snapshot => {
                    let last_closed = calendar::prev_day(today);
                    for day in calendar::days(from, to.min(last_closed)) {
                        out.extend(self.snapshot_as::<O>(day).map(|d| (kind, day, d)));
                    }
                }
                Kind::Monthly => {
                    for month in calendar::months(from, to) {
                        let closed = last_of_month(month) < today;
                        out.extend(
                            self.monthly_as::<O>(month, closed)
                                .map(|d| (kind, month, d)),
                        );
                    }
                }
            }
        }
        out
    }
}

/// The earliest day whose transactions a range's documents depend on:
/// 1 January of the year of the range's first month (for YTD, contract
/// §7.1).
pub fn earliest_dependency(from: NaiveDate) -> NaiveDate {
    first_of_year(first_of_month(from))
}

fn merge_categories(
    into: &mut VecMap<Option<ObjectId>, CategorySum>,
    from: &VecMap<Option<ObjectId>, CategorySum>,
) {
    // The month's first entry (in the live path, the days merged before
    // today): a copy, not one sorted insertion per category.
    if into.is_empty() {
        into.clone_from(from);
        return;
    }
    for (k, v) in from {
        let e = into.entry_or_default(*k);
        e.amount += v.amount;
        e.count += v.count;
    }
}

/// Category ids by hex (the order of their bytes), null last (contract
/// §5.7).
fn cmp_id_null_last(a: &Option<ObjectId>, b: &Option<ObjectId>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.bytes().cmp(&b.bytes()),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
}
