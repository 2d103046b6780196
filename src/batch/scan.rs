//! The from-scratch generator: a streaming, user-at-a-time merge of the
//! source and the stored documents (`docs/data-contract.md` §7.1).
//!
//! Transactions are read in one cursor sorted by (`user_id`, `date`);
//! the stored documents of the range in one cursor per kind sorted by
//! (`user_id`, date); pockets and categories are loaded once. The scanner
//! walks the users in ascending id order and, for each, folds that user's
//! transactions into a ledger, builds the expected documents and compares
//! them with the stored ones. The number of queries does not depend on the
//! number of users, and memory holds one user's ledger at a time plus the
//! pockets and labels.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::error::{Context, Result};
use bson::oid::ObjectId;
use bson::{doc, Bson, Document};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use futures::TryStreamExt;
use mongodb::options::Hint;
use mongodb::Database;
use tokio::sync::mpsc;

use crate::core::calendar::{date_label, first_of_month, label_date, Calendar};
use crate::core::ledger::{Balances, UserLedger};
use crate::core::money::Money;
use crate::core::reports::{earliest_dependency, Categories, Kind, UserView};
use crate::core::source::{
    decode_category, decode_pocket, decode_transaction, Pocket, RejectReason, SourceId,
};
use crate::mongo::lease::Fence;
use crate::mongo::rejects;
use crate::mongo::{CATEGORIES, POCKETS, TRANSACTIONS};
use crate::plan::compare::{compare_user, DocChange};

/// The periods a run covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub kinds: Vec<Kind>,
}

/// A pocket whose stored balance is not explained by its transactions.
#[derive(Clone, Debug, PartialEq)]
pub struct Drift {
    pub user: ObjectId,
    pub pocket: ObjectId,
    pub balance: Money,
    pub explained: Money,
}

/// Everything the scan found for one user.
#[derive(Debug, Default)]
pub struct UserResult {
    pub user: Option<ObjectId>,
    pub changes: Vec<DocChange>,
    pub drifts: Vec<Drift>,
    pub documents: usize,
    /// A [`Scope::Since`] scan had no year-to-date baseline for this user:
    /// nothing was built; scan the user again with [`Scope::Dependencies`].
    pub needs_full_scope: bool,
    /// With [`Focus::keep_from`]: what the tailer keeps in memory.
    pub kept: Option<Kept>,
}

/// One user's inputs from a day on, as a scan read them: the tailer's
/// in-memory copy ([`crate::service::live`]).
#[derive(Debug, Default)]
pub struct Kept {
    /// Valid transactions dated from the day on, live or soft-deleted.
    pub transactions: Vec<crate::core::source::Transaction>,
    pub pockets: BTreeMap<ObjectId, Pocket>,
    /// Fingerprints of the stored documents from the day on.
    pub stored: Vec<((Kind, NaiveDate), crate::plan::fingerprint::StoredMeta)>,
    /// Income and expense of the year before the day.
    pub baseline: crate::core::ledger::YtdBaseline,
}

/// Which transactions the scan reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// From 1 January of the range's first year on: all the range needs.
    Dependencies,
    /// All history, which also lets the scan measure drift.
    AllHistory,
    /// From this day on, with year-to-date baselines for the days before it
    /// ([`Focus::ytd_baselines`]): the cheap scan of the live path and of
    /// the nightly steps.
    Since(NaiveDate),
}

impl Scope {
    /// A scan from a day other than 1 January needs year-to-date baselines.
    fn needs_baseline(self) -> bool {
        matches!(self, Scope::Since(day) if day.ordinal() != 1)
    }
}

/// Narrows a scan to some users (the live path) and moves the first day
/// whose reports are still open (after the 23:59 finalization of today).
#[derive(Clone, Debug, Default)]
pub struct Focus {
    pub users: Option<Vec<ObjectId>>,
    pub reports_open_from: Option<NaiveDate>,
    /// For [`Scope::Since`]: each user's income and expense of the year
    /// before the scan's first day.
    pub ytd_baselines: Option<std::sync::Arc<HashMap<ObjectId, crate::core::ledger::YtdBaseline>>>,
    /// Hand each user's inputs from this day (a 1st of month, not before
    /// the scan's first day) to the caller: [`UserResult::kept`].
    pub keep_from: Option<NaiveDate>,
}

impl Focus {
    /// `filter` restricted to the focused users, if any (see [`by_users`]).
    fn narrow(&self, filter: Document) -> Document {
        match &self.users {
            Some(users) => by_users(users, filter),
            None => filter,
        }
    }
}

/// `filter` restricted to `users`, the `user_id` condition first.
///
/// The order matters on SecantusDB, not on `mongod`: with the condition on
/// the date first, SecantusDB serves `{date: range, user_id: {$in: [u]}}`
/// from the standalone date index — every user's documents in the range
/// (1.4 s for one user among 1,000 × 40 days, against 3.5 ms with
/// `user_id` first; a hint of the `(user_id, date)` index is slower
/// still, 1.7–2.3 s). A focused rescan of one user read every report of
/// the window that way.
pub fn by_users(users: &[ObjectId], filter: Document) -> Document {
    let mut out = doc! { "user_id": { "$in": users.to_vec() } };
    out.extend(filter);
    out
}

/// One kind's stored documents and the next one read from them.
type StoredCursor = (Kind, Feed, Option<(ObjectId, Document)>);

/// Documents per round trip of the transaction and stored-document cursors.
/// A scan holds each cursor's raw batch plus its decoded read-ahead (below),
/// which is most of `tally run`'s peak memory while it loads the window; the
/// batch size made no measurable difference to the scan's speed between
/// 1,000 and 50,000 (BENCHMARKS.md), so batches stay small.
const TX_BATCH: u32 = 5_000;
const STORED_BATCH: u32 = 2_000;
/// Documents per hand-over from a read-ahead task, and hand-overs buffered:
/// a cursor holds at most its server batch plus (depth + 2) × chunk decoded
/// documents (a decoded report takes several times its BSON size).
const FEED_CHUNK: usize = 100;
const FEED_DEPTH: usize = 2;

/// A cursor read ahead by its own task through a bounded channel, so the
/// server's query and batches overlap the scan's own work (and the four
/// cursors of a scan are queried concurrently). Memory stays bounded.
struct Feed {
    rx: mpsc::Receiver<Result<Vec<Document>>>,
    chunk: std::vec::IntoIter<Document>,
}

impl Feed {
    /// Queries `coll` with `filter`, sorted by user_id, hinted by `hint`.
    fn spawn(
        db: &Database,
        coll: &'static str,
        filter: Document,
        hint: Option<Document>,
        batch: u32,
    ) -> Feed {
        let (tx, rx) = mpsc::channel(FEED_DEPTH);
        let db = db.clone();
        tokio::spawn(async move {
            let collection = db.collection::<Document>(coll);
            let mut find = collection
                .find(filter)
                .sort(doc! { "user_id": 1 })
                .allow_disk_use(true)
                .batch_size(batch);
            if let Some(keys) = hint {
                find = find.hint(Hint::Keys(keys));
            }
            let failed =
                |e: mongodb::error::Error| crate::Error::from(e).context(format!("reading {coll}"));
            let mut cursor = match find.await {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(failed(e))).await;
                    return;
                }
            };
            let mut chunk = Vec::with_capacity(FEED_CHUNK);
            loop {
                match cursor.try_next().await {
                    Ok(Some(d)) => {
                        chunk.push(d);
                        if chunk.len() == FEED_CHUNK
                            && tx.send(Ok(std::mem::take(&mut chunk))).await.is_err()
                        {
                            return; // the scan was dropped
                        }
                    }
                    Ok(None) => {
                        if !chunk.is_empty() {
                            let _ = tx.send(Ok(chunk)).await;
                        }
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(failed(e))).await;
                        return;
                    }
                }
            }
        });
        Feed {
            rx,
            chunk: Vec::new().into_iter(),
        }
    }

    async fn next(&mut self) -> Result<Option<Document>> {
        loop {
            if let Some(d) = self.chunk.next() {
                return Ok(Some(d));
            }
            match self.rx.recv().await {
                Some(Ok(chunk)) => self.chunk = chunk.into_iter(),
                Some(Err(e)) => return Err(e),
                None => return Ok(None),
            }
        }
    }
}

fn ascending(v: &Bson) -> bool {
    match v {
        Bson::Int32(i) => *i == 1,
        Bson::Int64(i) => *i == 1,
        Bson::Double(d) => *d == 1.0,
        _ => false,
    }
}

/// Whether `coll` has an index on exactly `keys` (ascending fields).
async fn has_index(db: &Database, coll: &str, keys: &Document) -> bool {
    let Ok(mut indexes) = db.collection::<Document>(coll).list_indexes().await else {
        return false; // no collection yet
    };
    while let Ok(Some(index)) = indexes.try_next().await {
        let same = index.keys.len() == keys.len()
            && index
                .keys
                .iter()
                .zip(keys)
                .all(|((k, v), (want, _))| k == want && ascending(v));
        if same {
            return true;
        }
    }
    false
}

/// Walks users in id order; see the module docs.
pub struct Scanner {
    cal: Calendar,
    range: Range,
    now: DateTime<Utc>,
    today: NaiveDate,
    scope: Scope,
    /// Every owned pocket, sorted by (`user_id`, id); each user's run is
    /// taken off the front at its turn. One vector, not a map of maps: a
    /// `BTreeMap` allocates a whole node (1.5 KiB) for a user's two
    /// pockets, and a load held that for every user to its end.
    pockets: VecDeque<Pocket>,
    users_with_pockets: usize,
    categories: Categories,
    transactions: Feed,
    pending_tx: Option<crate::core::source::Transaction>,
    stored: Vec<StoredCursor>,
    known_rejects: HashSet<String>,
    /// Invalid documents seen and not yet recorded.
    pub rejects: Vec<(&'static str, SourceId, RejectReason)>,
    /// Documents that had a reject record and are valid now.
    pub corrected: Vec<(&'static str, SourceId)>,
    pub reject_counts: BTreeMap<RejectReason, u64>,
    pub transactions_read: u64,
    pub users_done: u64,
    reports_open_from: NaiveDate,
    ytd_baselines: Option<std::sync::Arc<HashMap<ObjectId, crate::core::ledger::YtdBaseline>>>,
    keep_from: Option<NaiveDate>,
}

impl Scanner {
    /// Opens every cursor of the scan: a fixed number of queries.
    pub async fn open(
        db: &Database,
        cal: Calendar,
        range: Range,
        now: DateTime<Utc>,
        scope: Scope,
    ) -> Result<Scanner> {
        Scanner::open_focused(db, cal, range, now, scope, Focus::default()).await
    }

    /// [`Scanner::open`] narrowed by `focus`. A focused scan leaves the
    /// bookkeeping of corrected rejects to its caller.
    pub async fn open_focused(
        db: &Database,
        cal: Calendar,
        range: Range,
        now: DateTime<Utc>,
        scope: Scope,
        focus: Focus,
    ) -> Result<Scanner> {
        let mut reject_counts = BTreeMap::new();
        let mut rejects = Vec::new();
        let known_rejects = match focus.users {
            None => load_reject_keys(db).await?,
            Some(_) => HashSet::new(),
        };
        let mut corrected = Vec::new();

        let mut pockets: VecDeque<Pocket> = VecDeque::new();
        let mut cursor = db
            .collection::<Document>(POCKETS)
            .find(focus.narrow(doc! {}))
            .await
            .context("reading pockets")?;
        while let Some(raw) = cursor.try_next().await.context("reading pockets")? {
            match decode_pocket(&raw) {
                Ok(p) => {
                    let id = SourceId::Oid(p.id);
                    match p.reject_reason() {
                        Some(r) => note_reject(&mut rejects, &mut reject_counts, POCKETS, id, r),
                        None if known_rejects.contains(&reject_key(POCKETS, &id)) => {
                            corrected.push((POCKETS, id))
                        }
                        None => {}
                    }
                    if p.user_id.is_some() {
                        pockets.push_back(p);
                    }
                }
                Err(r) => {
                    let id = SourceId::from_bson(raw.get("_id").unwrap_or(&Bson::Null));
                    note_reject(&mut rejects, &mut reject_counts, POCKETS, id, r);
                }
            }
        }
        // Stable: of two documents with the same id, the later one counts,
        // as when they were inserted into a map in cursor order.
        pockets
            .make_contiguous()
            .sort_by_key(|p| (p.user_id.map(|u| u.bytes()), p.id.bytes()));
        let mut users_with_pockets = 0;
        let mut last = None;
        for p in &pockets {
            if p.user_id != last {
                users_with_pockets += 1;
                last = p.user_id;
            }
        }

        let categories = load_categories(db).await?;

        let filter = match scope {
            Scope::AllHistory => doc! {},
            Scope::Dependencies => {
                // Dates from the start on, and every `date` that is not a
                // datetime (missing, null, a string...): those are rejects
                // to record, read here rather than by a second full scan.
                // A range comparison only matches datetimes, so its `$not`
                // matches them; servers serve it from the (user_id, date)
                // index like the plain range.
                let start = cal.day_start(earliest_dependency(range.from));
                let start = bson::DateTime::from_millis(start.timestamp_millis());
                doc! { "date": { "$not": { "$lt": start } } }
            }
            Scope::Since(day) => {
                let start = cal.day_start(day);
                doc! { "date": { "$gte": bson::DateTime::from_millis(start.timestamp_millis()) } }
            }
        };
        // Every cursor is sorted by user_id alone: the merge needs users in
        // order, never a user's documents in any order. A whole-collection
        // scan walks the (user_id, date) index by hint when it exists, so the
        // server never sorts in memory; a focused scan leaves the plan to the
        // server (its `$in` on user_id is selective).
        let whole = focus.users.is_none();
        let tx_index = doc! { "user_id": 1, "date": 1 };
        let tx_hint = (whole && has_index(db, TRANSACTIONS, &tx_index).await).then_some(tx_index);
        let transactions = Feed::spawn(db, TRANSACTIONS, focus.narrow(filter), tx_hint, TX_BATCH);

        let mut stored = Vec::new();
        for &kind in &range.kinds {
            let (lo, hi) = match kind {
                Kind::Monthly => (first_of_month(range.from), first_of_month(range.to)),
                _ => (range.from, range.to),
            };
            let index = doc! { "user_id": 1, kind.date_field(): 1 };
            let hint = (whole && has_index(db, kind.collection(), &index).await).then_some(index);
            let feed = Feed::spawn(
                db,
                kind.collection(),
                focus.narrow(
                    doc! { kind.date_field(): { "$gte": date_label(lo), "$lte": date_label(hi) } },
                ),
                hint,
                STORED_BATCH,
            );
            stored.push((kind, feed, None));
        }

        let mut scanner = Scanner {
            today: cal.day_of(now),
            reports_open_from: match focus.reports_open_from {
                Some(d) => d,
                None => reports_open_from(db, &cal, now).await?,
            },
            ytd_baselines: focus.ytd_baselines.clone(),
            keep_from: focus.keep_from,
            cal,
            range,
            now,
            scope,
            pockets,
            users_with_pockets,
            categories,
            transactions,
            pending_tx: None,
            stored,
            known_rejects,
            rejects,
            corrected,
            reject_counts,
            transactions_read: 0,
            users_done: 0,
        };
        scanner.advance_tx().await?;
        for i in 0..scanner.stored.len() {
            scanner.advance_stored(i).await?;
        }
        Ok(scanner)
    }

    /// Users that own a pocket: a lower bound of the users to visit.
    pub fn users_with_pockets(&self) -> usize {
        self.users_with_pockets
    }

    async fn advance_tx(&mut self) -> Result<()> {
        self.pending_tx = None;
        while let Some(raw) = self.transactions.next().await? {
            self.transactions_read += 1;
            match decode_transaction(&raw) {
                Ok(tx) => {
                    if !self.known_rejects.is_empty()
                        && self
                            .known_rejects
                            .contains(&reject_key(TRANSACTIONS, &tx.id))
                    {
                        self.corrected.push((TRANSACTIONS, tx.id.clone()));
                    }
                    self.pending_tx = Some(tx);
                    return Ok(());
                }
                Err(r) => self.reject_transaction(&raw, r),
            }
        }
        Ok(())
    }

    async fn advance_stored(&mut self, i: usize) -> Result<()> {
        let (_, feed, pending) = &mut self.stored[i];
        *pending = None;
        while let Some(doc) = feed.next().await? {
            if let Ok(user) = doc.get_object_id("user_id") {
                *pending = Some((user, doc));
                break;
            }
        }
        Ok(())
    }

    fn next_user_id(&self) -> Option<ObjectId> {
        let tx = self.pending_tx.as_ref().map(|t| t.user_id);
        let pocket = self.pockets.front().and_then(|p| p.user_id);
        let stored = self
            .stored
            .iter()
            .filter_map(|(_, _, p)| p.as_ref().map(|(u, _)| *u));
        tx.into_iter()
            .chain(pocket)
            .chain(stored)
            .min_by_key(|u| u.bytes())
    }

    /// The next user's differences, or `None` when every user is done.
    pub async fn next_user(&mut self) -> Result<Option<UserResult>> {
        let Some(user) = self.next_user_id() else {
            return Ok(None);
        };
        let mut ledger = UserLedger::default();
        let keep_start = self
            .keep_from
            .map(|d| self.cal.day_start(d).timestamp_millis());
        let mut kept_transactions = Vec::new();
        while let Some(tx) = self.pending_tx.as_ref().filter(|t| t.user_id == user) {
            ledger.apply(&self.cal, tx);
            if keep_start.is_some_and(|start| tx.date >= start) {
                kept_transactions.push(tx.clone());
            }
            self.advance_tx().await?;
        }
        let mut pockets = BTreeMap::new();
        while self
            .pockets
            .front()
            .is_some_and(|p| p.user_id == Some(user))
        {
            let p = self.pockets.pop_front().expect("front");
            pockets.insert(p.id, p);
        }
        if self.pockets.len() < self.pockets.capacity() / 2 {
            // Handed back by halves as users are done: a load's peak RSS
            // comes at its end, with the window full, and should not also
            // hold every user's pockets (BENCHMARKS.md, issue 13 (4)).
            self.pockets.shrink_to_fit();
        }
        let mut stored: BTreeMap<(Kind, NaiveDate), Document> = BTreeMap::new();
        for i in 0..self.stored.len() {
            let kind = self.stored[i].0;
            while self.stored[i].2.as_ref().is_some_and(|(u, _)| *u == user) {
                if let Some((_, doc)) = self.stored[i].2.take() {
                    if let Ok(label) = doc.get_datetime(kind.date_field()) {
                        stored.insert((kind, label_date(*label)), doc);
                    }
                }
                self.advance_stored(i).await?;
            }
        }
        let mut view = UserView::new(user, &ledger, pockets.values(), &self.categories, &self.cal);
        let mut baseline = None;
        // From 1 January the ledger holds the whole year: no baseline needed.
        if self.scope.needs_baseline() {
            match self.ytd_baselines.as_ref().and_then(|b| b.get(&user)) {
                Some(b) => {
                    baseline = Some(*b);
                    view = view.with_ytd_baseline(*b);
                }
                None => {
                    self.users_done += 1;
                    return Ok(Some(UserResult {
                        user: Some(user),
                        needs_full_scope: true,
                        ..UserResult::default()
                    }));
                }
            }
        }
        let expected = view.build_range(
            &self.range.kinds,
            self.range.from,
            self.range.to,
            self.today,
        );
        let mut drifts = Vec::new();
        if self.scope == Scope::AllHistory {
            let balances = Balances::new(&ledger, pockets.values());
            let before_all = NaiveDate::MIN;
            for p in pockets.values() {
                if let (Ok(balance), Some(unexplained)) =
                    (p.balance, balances.closing(&p.id, before_all))
                {
                    if !unexplained.is_zero() {
                        drifts.push(Drift {
                            user,
                            pocket: p.id,
                            balance,
                            explained: balance - unexplained,
                        });
                    }
                }
            }
        }
        let kept = self.keep_from.map(|from| Kept {
            transactions: kept_transactions,
            pockets,
            stored: stored
                .iter()
                .filter(|((_, period), _)| *period >= from)
                .map(|(key, doc)| (*key, crate::plan::fingerprint::StoredMeta::of(key.0, doc)))
                .collect(),
            baseline: crate::core::ledger::YtdBaseline::at(from, &ledger, baseline),
        });
        let documents = expected.len();
        let changes = compare_user(
            user,
            expected,
            self.reports_open_from,
            stored,
            self.now,
            self.cal.name(),
        );
        let result = UserResult {
            user: Some(user),
            documents,
            changes,
            drifts,
            kept,
            ..UserResult::default()
        };
        self.users_done += 1;
        Ok(Some(result))
    }

    /// Transactions whose `date` is not a datetime never match a
    /// [`Scope::Since`] scan's date filter; this finds them so they are
    /// recorded, not lost. The other scopes read them in the main scan.
    pub async fn scan_undated(&mut self, db: &Database) -> Result<()> {
        if !matches!(self.scope, Scope::Since(_)) {
            return Ok(());
        }
        let filter = doc! { "date": { "$not": { "$type": "date" } } };
        let mut cursor = db
            .collection::<Document>(TRANSACTIONS)
            .find(filter)
            .await
            .context("reading undated transactions")?;
        while let Some(raw) = cursor
            .try_next()
            .await
            .context("reading undated transactions")?
        {
            if let Err(r) = decode_transaction(&raw) {
                self.reject_transaction(&raw, r);
            }
        }
        Ok(())
    }

    /// Counts and keeps the reject record of an invalid transaction.
    fn reject_transaction(&mut self, raw: &Document, reason: RejectReason) {
        let id = SourceId::from_bson(raw.get("_id").unwrap_or(&Bson::Null));
        note_reject(
            &mut self.rejects,
            &mut self.reject_counts,
            TRANSACTIONS,
            id,
            reason,
        );
    }

    /// Writes the reject records gathered so far and removes corrected ones.
    pub async fn flush_rejects(&mut self, db: &Database, fence: Option<&Fence>) -> Result<()> {
        rejects::record_rejects(db, &std::mem::take(&mut self.rejects), self.now, fence).await?;
        rejects::clear_rejects(db, &std::mem::take(&mut self.corrected), fence).await
    }

    pub fn rejected(&self) -> u64 {
        self.reject_counts.values().sum()
    }
}

/// What a cheap scan found, users and rejects together.
#[derive(Debug, Default)]
pub struct Scanned {
    pub results: Vec<UserResult>,
    pub rejects: Vec<(&'static str, SourceId, RejectReason)>,
}

/// Scans `range` for the focused users (or all) reading transactions only
/// from `since` on, with year-to-date baselines taken from the final
/// documents that end the day before `since`; users without one are scanned
/// again from 1 January. Same results as a [`Scope::Dependencies`] scan, at
/// the cost of the days from `since` instead of the whole year.
///
/// `trusted_from` is the first day whose final documents tally keeps
/// current; before it the scan reads the whole year instead.
pub async fn scan_since(
    db: &Database,
    cal: Calendar,
    range: Range,
    now: DateTime<Utc>,
    since: NaiveDate,
    trusted_from: NaiveDate,
    focus: Focus,
) -> Result<Scanned> {
    let mut results = Vec::new();
    let rejects = scan_since_with(db, cal, range, now, since, trusted_from, focus, |r| {
        results.push(r)
    })
    .await?;
    Ok(Scanned { results, rejects })
}

/// [`scan_since`] handing each user's result to `sink` as it comes, so
/// the results of a large scan are never all in memory; returns the
/// invalid documents seen.
#[allow(clippy::too_many_arguments)]
pub async fn scan_since_with(
    db: &Database,
    cal: Calendar,
    range: Range,
    now: DateTime<Utc>,
    since: NaiveDate,
    trusted_from: NaiveDate,
    mut focus: Focus,
    mut sink: impl FnMut(UserResult),
) -> Result<Vec<(&'static str, SourceId, RejectReason)>> {
    let since = if crate::core::calendar::prev_day(since) < trusted_from {
        crate::core::calendar::first_of_year(since)
    } else {
        since
    };
    let mut rejects = Vec::new();
    let mut again = Vec::new();
    if Scope::Since(since).needs_baseline() {
        focus.ytd_baselines = Some(std::sync::Arc::new(
            ytd_baselines(db, since, focus.users.as_deref()).await?,
        ));
    }
    let scope = Scope::Since(since);
    let mut scanner =
        Scanner::open_focused(db, cal, range.clone(), now, scope, focus.clone()).await?;
    while let Some(r) = scanner.next_user().await? {
        match r.user {
            Some(user) if r.needs_full_scope => again.push(user),
            _ => sink(r),
        }
    }
    rejects.append(&mut scanner.rejects);
    if !again.is_empty() {
        let focus = Focus {
            users: Some(again),
            ytd_baselines: None,
            ..focus
        };
        let mut scanner =
            Scanner::open_focused(db, cal, range, now, Scope::Dependencies, focus).await?;
        while let Some(r) = scanner.next_user().await? {
            sink(r);
        }
        rejects.append(&mut scanner.rejects);
    }
    Ok(rejects)
}

/// Each user's income and expense from 1 January to the day before `since`,
/// read from the snapshot of that day or, on the 1st, the previous month's
/// summary — documents tally keeps final and current.
async fn ytd_baselines(
    db: &Database,
    since: NaiveDate,
    users: Option<&[ObjectId]>,
) -> Result<HashMap<ObjectId, crate::core::ledger::YtdBaseline>> {
    let before = crate::core::calendar::prev_day(since);
    let mut sources = vec![(Kind::Snapshot, before)];
    if since.day() == 1 {
        sources.push((Kind::Monthly, first_of_month(before)));
    }
    let mut out = HashMap::new();
    for (kind, period) in sources {
        let mut filter = doc! { kind.date_field(): date_label(period) };
        if let Some(users) = users {
            filter = by_users(users, filter);
        }
        let mut cursor = db
            .collection::<Document>(kind.collection())
            .find(filter)
            .projection(doc! { "user_id": 1, "ytd_income": 1, "ytd_expense": 1 })
            .await
            .with_context(|| format!("reading {} for year-to-date baselines", kind.collection()))?;
        while let Some(d) = cursor.try_next().await? {
            let money = |f: &str| d.get(f).and_then(|v| Money::from_bson(v).ok());
            if let (Ok(user), Some(income), Some(expense)) = (
                d.get_object_id("user_id"),
                money("ytd_income"),
                money("ytd_expense"),
            ) {
                out.entry(user).or_insert(crate::core::ledger::YtdBaseline {
                    from: since,
                    income,
                    expense,
                });
            }
        }
    }
    Ok(out)
}

/// The first day whose reports are not final: today, or tomorrow once the
/// 23:59 step has marked today's reports final (`tally_finalizations`).
pub async fn reports_open_from(
    db: &Database,
    cal: &Calendar,
    now: DateTime<Utc>,
) -> Result<NaiveDate> {
    let today = cal.day_of(now);
    let last = crate::mongo::state::last_finalized(db, Kind::Report.cli_name()).await?;
    Ok(match last {
        Some((day, _)) if day >= today => crate::core::calendar::next_day(day),
        _ => today,
    })
}

/// Every category's label, by id.
pub async fn load_categories(db: &Database) -> Result<Categories> {
    let mut categories = foldhash::HashMap::default();
    let mut cursor = db
        .collection::<Document>(CATEGORIES)
        .find(doc! {})
        .await
        .context("reading categories")?;
    while let Some(raw) = cursor.try_next().await.context("reading categories")? {
        if let Some((id, name)) = decode_category(&raw) {
            categories.insert(id, name);
        }
    }
    Ok(Categories(categories))
}

fn note_reject(
    rejects: &mut Vec<(&'static str, SourceId, RejectReason)>,
    counts: &mut BTreeMap<RejectReason, u64>,
    coll: &'static str,
    id: SourceId,
    reason: RejectReason,
) {
    *counts.entry(reason).or_default() += 1;
    rejects.push((coll, id, reason));
}

/// The key of a reject record in [`load_reject_keys`]' set: the
/// collection, a NUL, and the id as [`Bson`]'s `Display` writes it. An
/// ObjectId is written here without `Display`'s two allocations: the live
/// path makes a key for every source event it settles.
pub fn reject_key(coll: &str, id: &SourceId) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match id {
        SourceId::Oid(o) => {
            let mut key = String::with_capacity(coll.len() + 37);
            key.push_str(coll);
            key.push_str("\u{0}ObjectId(\"");
            for b in o.bytes() {
                key.push(char::from(HEX[usize::from(b >> 4)]));
                key.push(char::from(HEX[usize::from(b & 15)]));
            }
            key.push_str("\")");
            key
        }
        other => format!("{coll}\u{0}{}", other.to_bson()),
    }
}

/// The documents that have a reject record, by [`reject_key`].
pub async fn load_reject_keys(db: &Database) -> Result<HashSet<String>> {
    Ok(rejects::reject_records(db)
        .await?
        .into_iter()
        .map(|(coll, id)| reject_key(&coll, &SourceId::from_bson(&id)))
        .collect())
}

/// The first day from which a rescan reaches each user's every stored
/// document: its earliest stored day (for a monthly summary, its month's
/// last day: a rescan from any day of a month rebuilds the month's
/// summary). Drift on one of its pockets may reach back that far. Users with
/// no document are absent. One grouped query per collection, on the
/// unique `(user_id, period)` index.
pub async fn first_stored_days(
    db: &Database,
    users: &[bson::oid::ObjectId],
) -> Result<HashMap<bson::oid::ObjectId, NaiveDate>> {
    use futures::TryStreamExt;
    let mut first: HashMap<bson::oid::ObjectId, NaiveDate> = HashMap::new();
    for kind in Kind::ALL {
        let field = format!("${}", kind.date_field());
        let pipeline = [
            doc! { "$match": { "user_id": { "$in": users } } },
            doc! { "$group": { "_id": "$user_id", "first": { "$min": field } } },
        ];
        let mut cursor = db
            .collection::<Document>(kind.collection())
            .aggregate(pipeline)
            .await
            .with_context(|| format!("finding users' first documents in {}", kind.collection()))?;
        while let Some(d) = cursor.try_next().await? {
            if let (Ok(user), Ok(at)) = (d.get_object_id("_id"), d.get_datetime("first")) {
                let mut day = crate::core::calendar::label_date(*at);
                if kind == Kind::Monthly {
                    // A rescan from any day of a month rebuilds its summary.
                    day = crate::core::calendar::last_of_month(day);
                }
                let e = first.entry(user).or_insert(day);
                *e = (*e).min(day);
            }
        }
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_focused_filter_names_its_users_first() {
        let u = ObjectId::new();
        let f = Focus {
            users: Some(vec![u]),
            ..Focus::default()
        }
        .narrow(doc! { "date": { "$gte": 1 }, "deleted_at": Bson::Null });
        let keys: Vec<&str> = f.keys().map(String::as_str).collect();
        assert_eq!(keys, ["user_id", "date", "deleted_at"]);
        assert_eq!(f.get_document("user_id").unwrap(), &doc! { "$in": [u] });
        let whole = Focus::default().narrow(doc! { "date": 1 });
        assert_eq!(whole, doc! { "date": 1 });
    }

    #[test]
    fn a_reject_key_is_the_collection_and_the_ids_display() {
        let ids = [
            SourceId::Oid(ObjectId::new()),
            SourceId::Oid(ObjectId::from_bytes([0xff; 12])),
            SourceId::Other(Box::new(Bson::String("a1".into()))),
            SourceId::Other(Box::new(Bson::Int64(7))),
        ];
        for id in &ids {
            let display = format!("pockets\u{0}{}", id.to_bson());
            assert_eq!(reject_key("pockets", id), display);
        }
        // Distinct ids, distinct keys.
        let keys: HashSet<String> = ids.iter().map(|id| reject_key("pockets", id)).collect();
        assert_eq!(keys.len(), ids.len());
    }
}
