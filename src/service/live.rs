//! The tailer's memory: every user's inputs over the open window, and a
//! fingerprint of every stored document of the window.
//!
//! A change event updates this state at once (a transaction's old version
//! is replaced by its new one), so a flush folds the touched users'
//! transactions into ledgers, builds their documents with the same builders
//! as backfill, compares them with the fingerprints and writes only what
//! differs — it reads nothing from the server. The ledgers are folded on
//! demand, not held: a user's window is some 55 transactions that fold in
//! microseconds, while a held ledger took 330 bytes per transaction beside
//! the transaction itself (BENCHMARKS.md, issue 13 (4)). The window starts on a 1st
//! of month (`from`), so every month in it is whole; the income and
//! expense of the year before it are each user's baseline. Changes before
//! the window, and users the window does not hold, go through a focused
//! scan of the source (the batch path), which also reloads the user here.
//!
//! Events are applied as *states*, not deltas: "transaction X is now N"
//! replaces whatever X was. Replaying an event, or applying one older than
//! a reload that already saw its effect, converges on the latest state.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bson::oid::ObjectId;
use chrono::{DateTime, Datelike, NaiveDate, Utc};

use crate::batch::scan::Kept;
use crate::core::calendar::{first_of_month, first_of_year, last_of_month, Calendar};
use crate::core::ledger::{income_and_outflow, nets, UserLedger, YtdBaseline};
use crate::core::money::Money;
use crate::core::out::RawOut;
use crate::core::reports::{Categories, Kind, UserView};
use crate::core::source::{Pocket, SourceId, Transaction};
use crate::core::vecmap::{grow_by_an_eighth, Sorted, VecMap};
use crate::plan::compare::{compare_user, Difference, DocChange};
use crate::plan::fingerprint::{fingerprint, fingerprint_raw, Metas, StoredMeta};
use crate::plan::write::Write;
use crate::service::held::{Held, Refs, Slot, TxOwners};

/// One user's inputs over the window.
#[derive(Debug)]
struct UserState {
    user: ObjectId,
    /// Valid transactions dated in the window, live or soft-deleted, in
    /// the compact form ([`Held`]) whose ids are indexes into `refs`.
    transactions: Sorted<Held>,
    refs: Refs,
    /// Σ net(p) of the live held transactions, per pocket id they touch
    /// (the user's or not; contract §4.1), kept as transactions come and
    /// go: a user's anchors are its balances less these
    /// ([`anchors_of`]). Summing them anew for each flush walked every
    /// transaction of each user it computed (5% of the live replay's time,
    /// BENCHMARKS.md (3), eleventh update).
    nets: VecMap<ObjectId, Money>,
    /// The user's own pockets (valid or not), by id.
    pockets: Sorted<Pocket>,
    /// The stored documents' metas, by (kind, period): the window holds
    /// one per stored document of every user.
    stored: Metas,
    baseline: YtdBaseline,
    /// The [`anchors_key`] of the user's [anchors](Live::anchors) when its
    /// documents were last computed (`None`: not since it was loaded).
    computed: Option<u64>,
    /// That of its anchors when its documents were last made consistent
    /// back to its first stored document (`None`: not since it was loaded).
    settled: Option<u64>,
    /// Its anchors' key now, once asked for ([`NOT_KNOWN`] until then and
    /// after any change of its transactions or pockets): a flush asks up to
    /// three times a user, and each answer walks every transaction (7% of
    /// the live replay's time before it was kept). Atomic only so that
    /// `&Live` can fill it in.
    anchors: AtomicU64,
}

/// [`UserState::anchors`] before it is known. A key that happens to equal
/// it is computed each time it is asked for.
const NOT_KNOWN: u64 = u64::MAX;

/// Per valid pocket of a user, its closing balance on the day before the
/// window: B(p) − Σ net(p) over the window's days (contract §4.1). Every
/// closing balance before the window, and every one in it before the first
/// day whose transactions changed, follows from it alone.
pub type Anchors = Vec<(ObjectId, Money)>;

/// Every user's state over the window `[from, ∞)`.
pub struct Live {
    cal: Calendar,
    from: NaiveDate,
    from_millis: i64,
    /// The first day documents are kept for: `from`, or later when tally
    /// manages only days after it (days before are not tally's to write).
    open_from: NaiveDate,
    categories: Categories,
    /// Every held user's state, in no order: `slots` finds a user's, and
    /// the owner maps name the owner by its slot (4 bytes, not 12).
    users: Vec<UserState>,
    /// Asked on every event: hashed with foldhash, seeded per process
    /// (SipHash cost ~1% of the live replay).
    slots: foldhash::HashMap<ObjectId, Slot>,
    tx_owner: TxOwners,
    pocket_owner: foldhash::HashMap<ObjectId, Slot>,
}

impl Live {
    /// An empty window from `from` (a 1st of month); documents before
    /// `managed_from` are left alone.
    pub fn new(
        cal: Calendar,
        from: NaiveDate,
        managed_from: NaiveDate,
        categories: Categories,
    ) -> Live {
        debug_assert_eq!(from, first_of_month(from));
        Live {
            cal,
            from,
            from_millis: cal.day_start(from).timestamp_millis(),
            open_from: from.max(managed_from),
            categories,
            users: Vec::new(),
            slots: foldhash::HashMap::default(),
            tx_owner: TxOwners::default(),
            pocket_owner: foldhash::HashMap::default(),
        }
    }

    /// First day of the window.
    pub fn from(&self) -> NaiveDate {
        self.from
    }

    /// First day whose documents the window computes.
    pub fn open_from(&self) -> NaiveDate {
        self.open_from
    }

    pub fn holds(&self, user: &ObjectId) -> bool {
        self.slots.contains_key(user)
    }

    pub fn users(&self) -> Vec<ObjectId> {
        self.users.iter().map(|s| s.user).collect()
    }

    fn state(&self, user: &ObjectId) -> Option<&UserState> {
        self.slots.get(user).map(|&i| &self.users[i as usize])
    }

    fn state_mut(&mut self, user: &ObjectId) -> Option<&mut UserState> {
        self.slots.get(user).map(|&i| &mut self.users[i as usize])
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    pub fn transaction_count(&self) -> usize {
        self.tx_owner.len()
    }

    /// Replaces a user's state with what a scan kept of it. A transaction
    /// or pocket the scan found with this user that the window still holds
    /// for another (it changed hands since that user was read) leaves the
    /// other's state; those users are returned, to be recomputed (found by
    /// tests/simulation.rs: a rescan of a pocket's new owner, read before
    /// the move's event, left the pocket in the old owner's snapshots).
    pub fn insert(&mut self, user: ObjectId, kept: Kept) -> Vec<ObjectId> {
        self.remove(&user);
        // The new state goes last; no other state is there yet.
        let slot = slot_at(self.users.len());
        let mut displaced = Vec::new();
        for tx in &kept.transactions {
            if let Some(other) = self.tx_owner.insert(&tx.id, slot) {
                if let Some(state) = self.users.get_mut(other as usize) {
                    if let Some(old) = state.transactions.remove(&tx.id) {
                        state.count_nets(&old, false);
                        state.changed();
                        displaced.push(state.user);
                    }
                }
            }
        }
        for id in kept.pockets.keys() {
            if let Some(other) = self.pocket_owner.insert(*id, slot) {
                if let Some(state) = self.users.get_mut(other as usize) {
                    if state.pockets.remove(id).is_some() {
                        state.changed();
                        displaced.push(state.user);
                    }
                }
            }
        }
        let mut state = UserState {
            user,
            transactions: Sorted::default(),
            refs: Refs::default(),
            nets: VecMap::default(),
            pockets: Sorted::from_unsorted(kept.pockets.into_values().collect()),
            stored: Metas::from_unsorted(kept.stored),
            baseline: kept.baseline,
            computed: None,
            settled: None,
            anchors: AtomicU64::new(NOT_KNOWN),
        };
        state.hold(kept.transactions);
        // Grown by an eighth, not doubled: a state is ~200 bytes a user.
        grow_by_an_eighth(&mut self.users, 64);
        self.users.push(state);
        self.slots.insert(user, slot);
        displaced.sort_by_key(|u| u.bytes());
        displaced.dedup();
        displaced
    }

    fn remove(&mut self, user: &ObjectId) {
        let Some(slot) = self.slots.remove(user) else {
            return;
        };
        let old = self.users.swap_remove(slot as usize);
        let owners = (&mut self.tx_owner, &mut self.pocket_owner);
        hand_over(owners, &old, slot, None);
        // The last state moved into `slot`: what it owns follows it.
        let Some(moved) = self.users.get(slot as usize) else {
            return;
        };
        self.slots.insert(moved.user, slot);
        let owners = (&mut self.tx_owner, &mut self.pocket_owner);
        hand_over(owners, moved, slot_at(self.users.len()), Some(slot));
    }

    /// Transaction `id` is now `new` (`None`: deleted or invalid). Returns
    /// the (user, day) pairs it touched, and whether its previous version
    /// was known here. A transaction before the window, or of a user the
    /// window does not hold, is only reported: the caller rescans.
    pub fn set_transaction(
        &mut self,
        id: &SourceId,
        new: Option<&Transaction>,
    ) -> (Vec<(ObjectId, NaiveDate)>, bool) {
        let mut touched = Vec::new();
        let mut known = false;
        if let Some(owner) = self.tx_owner.remove(id) {
            if let Some(state) = self.users.get_mut(owner as usize) {
                if let Some(old) = state.transactions.remove(id) {
                    state.count_nets(&old, false);
                    state.changed();
                    known = true;
                    touched.push((state.user, self.cal.day_of_millis(old.date())));
                }
            }
        }
        if let Some(tx) = new {
            if tx.date >= self.from_millis {
                if let Some(&slot) = self.slots.get(&tx.user_id) {
                    let state = &mut self.users[slot as usize];
                    let compact = state.refs.hold(tx);
                    state.count_nets(&compact, true);
                    if let Some(replaced) = state.transactions.insert(compact) {
                        state.count_nets(&replaced, false);
                    }
                    state.changed();
                    self.tx_owner.insert(id, slot);
                }
            }
            touched.push((tx.user_id, self.cal.day_of_millis(tx.date)));
        }
        (touched, known)
    }

    /// Pocket `id` is now `new` (`None`: deleted). Returns the users whose
    /// pockets changed (its previous owner, if known here, and its owner
    /// now), and whether its previous version was known here.
    pub fn set_pocket(&mut self, id: ObjectId, new: Option<&Pocket>) -> (Vec<ObjectId>, bool) {
        let mut users = Vec::new();
        let mut known = false;
        if let Some(owner) = self.pocket_owner.remove(&id) {
            if let Some(state) = self.users.get_mut(owner as usize) {
                known = state.pockets.remove(&id).is_some();
                state.changed();
                users.push(state.user);
            }
        }
        if let Some(user) = new.and_then(|p| p.user_id) {
            if let Some(&slot) = self.slots.get(&user) {
                let state = &mut self.users[slot as usize];
                state.pockets.insert(new.expect("has a user").clone());
                state.changed();
                self.pocket_owner.insert(id, slot);
            }
            if !users.contains(&user) {
                users.push(user);
            }
        }
        (users, known)
    }

    /// Whether `new` differs from the pocket the window holds by its
    /// balance alone (a pocket the window does not hold: unknown, `false`).
    pub fn balance_only(&self, new: &Pocket) -> bool {
        let Some(old) = self
            .pocket_owner
            .get(&new.id)
            .and_then(|&s| self.users.get(s as usize))
            .and_then(|s| s.pockets.get(&new.id))
        else {
            return false;
        };
        // Field by field, without copying `old`'s strings; destructured
        // so that a new field of `Pocket` must be named here.
        let Pocket {
            id,
            user_id,
            name,
            kind,
            balance: _,
            created_at,
            deleted_at,
        } = old;
        (id, user_id, name, kind, created_at, deleted_at)
            == (
                &new.id,
                &new.user_id,
                &new.name,
                &new.kind,
                &new.created_at,
                &new.deleted_at,
            )
    }

    /// `user`'s anchors now (see [`Anchors`]).
    pub fn anchors(&self, user: &ObjectId) -> Option<Anchors> {
        self.state(user).map(|s| anchors_of(s, &s.nets))
    }

    /// Whether `user`'s anchors moved since its documents were last
    /// computed: then days its transaction events did not touch moved too.
    pub fn anchors_moved(&self, user: &ObjectId) -> bool {
        self.state(user)
            .is_none_or(|s| s.computed != Some(anchors_key(s)))
    }

    /// Whether `user`'s documents were computed since it was loaded.
    pub fn was_computed(&self, user: &ObjectId) -> bool {
        self.state(user).is_some_and(|s| s.computed.is_some())
    }

    /// Whether `user`'s anchors are those of its last consistent state back
    /// to its first stored document: then no document before the window
    /// needs restating.
    pub fn anchors_settled(&self, user: &ObjectId) -> bool {
        self.state(user)
            .is_some_and(|s| s.settled == Some(anchors_key(s)))
    }

    /// Records `user`'s anchors as those of its last computation.
    pub fn note_computed(&mut self, user: &ObjectId) {
        if let Some(s) = self.state_mut(user) {
            s.computed = Some(anchors_key(s));
        }
    }

    /// Records `user`'s anchors as consistent back to its first document.
    pub fn note_settled(&mut self, user: &ObjectId) {
        if let Some(s) = self.state_mut(user) {
            s.settled = Some(anchors_key(s));
        }
    }

    /// The changes that bring `user`'s stored documents of `kinds` over
    /// `[from, to]` (clamped to the window) to what its state builds now.
    #[allow(clippy::too_many_arguments)]
    pub fn compute(
        &self,
        user: ObjectId,
        kinds: &[Kind],
        from: NaiveDate,
        to: NaiveDate,
        today: NaiveDate,
        reports_open_from: NaiveDate,
        now: DateTime<Utc>,
    ) -> Vec<DocChange> {
        let Some(state) = self.state(&user) else {
            return Vec::new();
        };
        let from = from.max(self.open_from);
        if from > to {
            return Vec::new();
        }
        state.stored.warm();
        let (ledger, baseline) = state.ledger_from(&self.cal, first_of_month(from), from);
        let pockets = state.pockets.as_slice();
        let view = UserView::new(user, &ledger, pockets, &self.categories, &self.cal)
            .with_ytd_baseline(baseline);
        // As bytes: a flush writes most of what it builds, and a
        // `Document` cost 6–8× more to build and drop (BENCHMARKS.md (3)).
        let expected = view.build_range_as::<RawOut>(kinds, from, to, today, reports_open_from);
        let mut stored: BTreeMap<(Kind, NaiveDate), StoredMeta> = BTreeMap::new();
        for &kind in kinds {
            let (lo, hi) = match kind {
                Kind::Monthly => (first_of_month(from), first_of_month(to)),
                _ => (from, to),
            };
            stored.extend(state.stored.range(kind, lo, hi));
        }
        compare_user(
            user,
            expected,
            reports_open_from,
            stored,
            now,
            self.cal.name(),
        )
    }

    /// Whether `change` only closes its period: the stored document is open
    /// and differs from the expected one by its final flag alone (what the
    /// nightly steps find for almost every document).
    pub fn only_closes(&self, change: &DocChange) -> bool {
        let Write::Upsert { kind, set, .. } = &change.write else {
            return false;
        };
        let Some(state) = self.state(&change.user) else {
            return false;
        };
        let Some(meta) = state.stored.get(*kind, change.period) else {
            return false;
        };
        if meta.is_final() || !set.get_bool(kind.final_field()).unwrap_or(false) {
            return false;
        }
        let Ok(mut open) = set.to_document() else {
            return false;
        };
        open.insert(kind.final_field(), false);
        fingerprint(&open) == meta.fingerprint()
    }

    /// Records writes the server has taken, so the fingerprints match
    /// what is stored.
    pub fn record(&mut self, writes: &[(ObjectId, NaiveDate, Write)]) {
        for (user, period, write) in writes {
            if !self.keeps(write.kind(), *period) {
                // Before the window (a focused rescan's write): not held.
                continue;
            }
            let Some(state) = self.state_mut(user) else {
                continue;
            };
            match write {
                Write::Upsert {
                    kind, set, leaves, ..
                } => {
                    let read = || StoredMeta::of_written(*kind, set, fingerprint_raw(set));
                    let meta = match leaves {
                        Some(meta) => {
                            // Every test run checks it against the bytes.
                            debug_assert_eq!(*meta, read(), "what a write leaves");
                            meta.clone()
                        }
                        None => read(),
                    };
                    state.stored.insert(*kind, *period, &meta);
                }
                Write::Delete { kind, .. } => {
                    state.stored.remove(*kind, *period);
                }
            }
        }
    }

    /// Moves the window's start forward to `from` (a 1st of month): older
    /// transactions and fingerprints are dropped, their income and expense
    /// move into each user's baseline. Keeps memory bounded by the window,
    /// not by how long tally has been running.
    pub fn slide(&mut self, from: NaiveDate) {
        debug_assert_eq!(from, first_of_month(from));
        if from <= self.from {
            return;
        }
        let start = self.cal.day_start(from).timestamp_millis();
        let open_from = self.open_from.max(from);
        for state in self.users.iter_mut() {
            state.baseline = state.baseline_at(&self.cal, from);
            if state
                .transactions
                .as_slice()
                .iter()
                .any(|tx| tx.date() < start)
            {
                // The anchors move to the new window's eve; a state they
                // matched before, they match after.
                let before = Some(anchors_key(state));
                let (computed, settled) = (state.computed == before, state.settled == before);
                // Held anew, so ids only the dropped ones named leave `refs`.
                let (kept, dropped): (Vec<Transaction>, Vec<Transaction>) =
                    state.expanded().partition(|tx| tx.date >= start);
                for tx in &dropped {
                    self.tx_owner.remove(&tx.id);
                }
                state.hold(kept);
                let after = Some(anchors_key(state));
                state.computed = if computed { after } else { None };
                state.settled = if settled { after } else { None };
            }
        }
        self.from = from;
        self.from_millis = start;
        self.open_from = open_from;
        let (month_from, open_from) = (self.from, self.open_from);
        for state in self.users.iter_mut() {
            state
                .stored
                .retain(|kind, period| keeps(kind, period, month_from, open_from));
        }
    }

    /// Whether the window holds the fingerprint of a document of `kind`
    /// for `period`.
    fn keeps(&self, kind: Kind, period: NaiveDate) -> bool {
        keeps(kind, period, self.from, self.open_from)
    }

    /// Drops everything (a full refresh reloads it).
    pub fn clear(&mut self) {
        self.users.clear();
        self.slots.clear();
        self.tx_owner.clear();
        self.pocket_owner.clear();
    }
}

/// The slot of the state at index `i` of the states.
fn slot_at(i: usize) -> Slot {
    // `Slot::MAX` marks a removed owner entry (`held::OidOwners`).
    Slot::try_from(i)
        .ok()
        .filter(|&s| s < Slot::MAX)
        .expect("fewer than 2^32 - 1 users")
}

/// The owner entries of `state`'s transactions and pockets that name
/// `from` name `to` instead (`None`: they are removed).
fn hand_over(
    (tx_owner, pocket_owner): (&mut TxOwners, &mut foldhash::HashMap<ObjectId, Slot>),
    state: &UserState,
    from: Slot,
    to: Option<Slot>,
) {
    for tx in state.transactions.as_slice() {
        if tx_owner.get(tx.id()) == Some(from) {
            match to {
                Some(to) => tx_owner.insert(tx.id(), to),
                None => tx_owner.remove(tx.id()),
            };
        }
    }
    for p in state.pockets.as_slice() {
        if pocket_owner.get(&p.id) == Some(&from) {
            match to {
                Some(to) => pocket_owner.insert(p.id, to),
                None => pocket_owner.remove(&p.id),
            };
        }
    }
}

/// [`Live::keeps`] for a window from `from` (monthly summaries) whose
/// reports and snapshots start at `open_from`.
fn keeps(kind: Kind, period: NaiveDate, from: NaiveDate, open_from: NaiveDate) -> bool {
    match kind {
        Kind::Monthly => period >= from,
        Kind::Report | Kind::Snapshot => period >= open_from,
    }
}

/// One user's changes split at its floor (contract §4.4): (those to write
/// now, the past ones to hold). Before the managed start tally keeps stored
/// documents current and creates none, but the reports and summaries a
/// back-dated transaction creates (its floor).
pub fn split_at_floor(
    changes: Vec<DocChange>,
    floor: Option<NaiveDate>,
    managed_from: NaiveDate,
) -> (Vec<DocChange>, Vec<DocChange>) {
    let (mut now, mut held) = (Vec::new(), Vec::new());
    for change in changes {
        let end = if change.kind == Kind::Monthly {
            last_of_month(change.period)
        } else {
            change.period
        };
        let past = floor.is_none_or(|f| end < f);
        if change.period < managed_from
            && change.difference == Difference::Missing
            && (change.kind == Kind::Snapshot || past)
        {
            continue;
        }
        if past {
            held.push(change);
        } else {
            now.push(change);
        }
    }
    (now, held)
}

/// A pocket's change event, as far as the days it reaches.
pub struct PocketChange<'a> {
    /// An `insert` event.
    pub insert: bool,
    pub new: Option<&'a Pocket>,
    /// The previous version, from the pre-image.
    pub old: Option<&'a Pocket>,
    /// It differs from the version the window held by its balance alone
    /// ([`Live::balance_only`]).
    pub balance_only: bool,
}

impl PocketChange<'_> {
    /// (first day to recompute, floor): a pocket that opens, closes or
    /// changes owner moves the days from then on at once (the floor, never
    /// before `managed_from`); a bare change waits (drift). Without a floor
    /// the whole open window is recomputed — but for a change of the
    /// balance alone, which reaches no day its user's transaction events
    /// did not mark unless it moved the user's anchors (drift, or a
    /// transaction's two writes split across flushes): the flush checks
    /// that and then recomputes the whole window. A floor before the open
    /// window means a rescan from the source.
    pub fn days(
        &self,
        cal: &Calendar,
        managed_from: NaiveDate,
        open: NaiveDate,
        today: NaiveDate,
    ) -> (NaiveDate, Option<NaiveDate>) {
        let from = managed_from;
        let day = |t: Option<i64>| t.map_or(from, |t| cal.day_of_millis(t).max(from));
        let floor = match (self.new, self.old) {
            (Some(n), None) if self.insert => Some(day(n.created_at)),
            (Some(n), Some(o)) if n.user_id != o.user_id => Some(from),
            (Some(n), Some(o)) if (n.created_at, n.deleted_at) != (o.created_at, o.deleted_at) => {
                let changed = [n.created_at, o.created_at, n.deleted_at, o.deleted_at];
                let days = changed
                    .into_iter()
                    .flatten()
                    .map(|t| cal.day_of_millis(t).max(from));
                days.min().or(Some(from))
            }
            _ => None,
        };
        let first = match floor {
            Some(f) => f.min(open),
            None if self.balance_only => today.max(open),
            None => open,
        };
        (first, floor)
    }
}

/// A user's anchors as 64 bits, to tell whether they moved since they were
/// noted without holding them (two vectors a user): a hash, like the
/// fingerprints of stored documents, with the same odds of a collision.
fn anchors_key(state: &UserState) -> u64 {
    let known = state.anchors.load(Relaxed);
    if known != NOT_KNOWN {
        // Every test run checks that no change left the key stale.
        debug_assert_eq!(known, anchors_key_now(state), "stale anchors key");
        return known;
    }
    let key = anchors_key_now(state);
    state.anchors.store(key, Relaxed);
    key
}

/// [`anchors_key`], computed.
fn anchors_key_now(state: &UserState) -> u64 {
    let anchors = anchors_of(state, &state.nets);
    debug_assert_eq!(
        anchors,
        anchors_of(state, &summed_nets(&state.transactions, &state.refs)),
        "nets kept apart from the transactions they sum"
    );
    let mut h = std::collections::hash_map::DefaultHasher::new();
    anchors.hash(&mut h);
    h.finish()
}

/// A user's anchors: each valid pocket's balance less its net over the
/// window's transactions (`nets`, [`UserState::nets`]), in pocket order.
fn anchors_of(state: &UserState, nets: &VecMap<ObjectId, Money>) -> Anchors {
    let pockets = state.pockets.as_slice().iter();
    pockets
        .filter_map(|p| {
            let net = nets.get(&p.id).copied().unwrap_or_default();
            p.balance.ok().map(|b| (p.id, b - net))
        })
        .collect()
}

/// [`UserState::nets`] summed over `transactions`.
fn summed_nets(transactions: &Sorted<Held>, refs: &Refs) -> VecMap<ObjectId, Money> {
    let mut sums = VecMap::default();
    for held in transactions.as_slice() {
        count_nets(&mut sums, refs, held, true);
    }
    sums
}

/// Adds `held`'s nets to `sums` (`add`), or takes them out; a soft-deleted
/// transaction has none (contract §1.2).
fn count_nets(sums: &mut VecMap<ObjectId, Money>, refs: &Refs, held: &Held, add: bool) {
    if !held.is_live() {
        return;
    }
    let (from, to) = refs.pockets(held);
    for (pocket, net) in nets(held.kind(), held.amount(), from, to) {
        let sum = sums.entry_or_default(pocket);
        if add {
            *sum += net;
        } else {
            *sum -= net;
        }
    }
}

impl UserState {
    /// The window's transactions from `cutoff` (a 1st of month, in the
    /// window) folded (contract §1.2 effects, §5 sums), and the year-to-date
    /// baseline at `cutoff`: the income and outflow of `cutoff`'s year
    /// before it. That baseline is all that documents of the months from
    /// `cutoff` on take from the earlier days (contract §4.1: a closing
    /// balance depends on later days only; §5.3: year-to-date sums), so a
    /// flush that starts at today folds the current month's transactions,
    /// not the window's.
    ///
    /// The days from `cutoff` to the day before `listed_from` (a day of
    /// `cutoff`'s month) are merged into one entry, without their
    /// transactions listed ([`UserLedger::apply_merged`]): their own
    /// documents cannot be built from the ledger, and a computation from
    /// `listed_from` builds none; their month's summary and every later
    /// document can. Folding them day by day cost an entry a day, a copy of
    /// each transaction's id and note, and summing the days again for the
    /// month, for documents not built.
    fn ledger_from(
        &self,
        cal: &Calendar,
        cutoff: NaiveDate,
        listed_from: NaiveDate,
    ) -> (UserLedger, YtdBaseline) {
        let mut ledger = UserLedger::default();
        let baseline = self.pass_from(cal, cutoff, Some((&mut ledger, listed_from)));
        (ledger, baseline)
    }

    /// The year-to-date baseline at `cutoff` (a 1st of month, in the
    /// window): the income and outflow of `cutoff`'s year before it, from
    /// the held transactions' amounts, without expanding them.
    fn baseline_at(&self, cal: &Calendar, cutoff: NaiveDate) -> YtdBaseline {
        self.pass_from(cal, cutoff, None)
    }

    /// One pass over the held transactions: the baseline at `cutoff`
    /// ([`UserState::baseline_at`]), and with a ledger, the transactions
    /// from `cutoff` folded into it ([`UserState::ledger_from`], the days
    /// before `listed_from` merged). One pass, not one for each: a user's
    /// transactions are mostly cold in memory when a flush reaches it.
    fn pass_from(
        &self,
        cal: &Calendar,
        cutoff: NaiveDate,
        ledger: Option<(&mut UserLedger, NaiveDate)>,
    ) -> YtdBaseline {
        debug_assert_eq!(cutoff, first_of_month(cutoff));
        let cutoff_ms = cal.day_start(cutoff).timestamp_millis();
        let year_ms = cal.day_start(first_of_year(cutoff)).timestamp_millis();
        // The ledger with the first day it lists by day, in milliseconds.
        let mut ledger = ledger.map(|(l, from)| (l, cal.day_start(from).timestamp_millis()));
        let mut baseline = YtdBaseline {
            from: cutoff,
            ..YtdBaseline::default()
        };
        if self.baseline.from.year() == cutoff.year() {
            (baseline.income, baseline.expense) = (self.baseline.income, self.baseline.expense);
        }
        for held in self.transactions.as_slice() {
            if !held.is_live() || held.date() < year_ms {
                continue;
            }
            if held.date() < cutoff_ms {
                let (income, outflow) = income_and_outflow(held.kind(), held.amount());
                baseline.income += income;
                baseline.expense += outflow;
            } else if let Some((ledger, listed_ms)) = &mut ledger {
                let day = cal.day_of_millis(held.date());
                let tx = self.refs.view(held);
                if held.date() >= *listed_ms {
                    ledger.apply_ref(day, &tx);
                } else {
                    ledger.apply_merged(cutoff, day, &tx);
                }
            }
        }
        baseline
    }

    /// The held transactions as `Transaction`s, in id order.
    fn expanded(&self) -> impl Iterator<Item = Transaction> + '_ {
        let txs = self.transactions.as_slice().iter();
        txs.map(|h| self.refs.expand(self.user, h))
    }

    /// Counts `held` in [`UserState::nets`] (`add`), or out of them.
    fn count_nets(&mut self, held: &Held, add: bool) {
        count_nets(&mut self.nets, &self.refs, held, add);
    }

    /// Its transactions or pockets changed: the anchors' key is not known.
    fn changed(&mut self) {
        *self.anchors.get_mut() = NOT_KNOWN;
    }

    /// Replaces the held transactions by `txs`, with a fresh `refs`.
    fn hold(&mut self, txs: Vec<Transaction>) {
        self.changed();
        let mut refs = Refs::default();
        let held = txs.iter().map(|tx| refs.hold(tx)).collect();
        self.transactions = Sorted::from_unsorted(held);
        refs.shrink_to_fit();
        self.nets = summed_nets(&self.transactions, &refs);
        self.refs = refs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::money::Money;
    use crate::core::reports::BOOKKEEPING;
    use crate::core::source::TxType;
    use crate::plan::compare::Difference;
    use bson::Document;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    struct World {
        cal: Calendar,
        user: ObjectId,
        other: ObjectId,
        pocket: Pocket,
        other_pocket: Pocket,
    }

    impl World {
        fn new() -> World {
            let cal = Calendar::from_name("Europe/Berlin").unwrap();
            let (user, other) = (ObjectId::new(), ObjectId::new());
            let pocket = |owner: ObjectId, balance: &str| Pocket {
                id: ObjectId::new(),
                user_id: Some(owner),
                name: Some("main".into()),
                kind: Some("cash".into()),
                balance: Ok(balance.parse().unwrap()),
                created_at: None,
                deleted_at: None,
            };
            World {
                cal,
                user,
                other,
                pocket: pocket(user, "500"),
                other_pocket: pocket(other, "70"),
            }
        }

        fn tx(&self, user: ObjectId, amount: &str, date: &str, hour: i64) -> Transaction {
            let pocket = if user == self.user {
                &self.pocket
            } else {
                &self.other_pocket
            };
            Transaction {
                id: SourceId::Oid(ObjectId::new()),
                user_id: user,
                kind: TxType::Expense,
                amount: amount.parse().unwrap(),
                pocket_from: Some(pocket.id),
                pocket_to: None,
                category_id: None,
                note: None,
                date: self.cal.day_start(day(date)).timestamp_millis() + hour * 3_600_000,
                deleted: false,
            }
        }

        /// A window holding `txs` as a fresh load would.
        fn load(&self, txs: &[Transaction]) -> Live {
            let mut live = Live::new(
                self.cal,
                day("2026-10-01"),
                day("2026-10-01"),
                Categories::default(),
            );
            for (user, pocket) in [(self.user, &self.pocket), (self.other, &self.other_pocket)] {
                let baseline = YtdBaseline {
                    from: day("2026-10-01"),
                    income: Money::ZERO,
                    expense: "100".parse().unwrap(),
                };
                live.insert(
                    user,
                    Kept {
                        transactions: txs.iter().filter(|t| t.user_id == user).cloned().collect(),
                        pockets: [(pocket.id, pocket.clone())].into_iter().collect(),
                        stored: Vec::new(),
                        baseline,
                    },
                );
            }
            live
        }

        /// Everything `live` builds for both users, as comparable text.
        fn documents(&self, live: &Live) -> Vec<String> {
            self.documents_from(live, day("2026-10-01"), day("2026-11-20"))
        }

        /// What `live` builds for both users from `from` through the end
        /// of the year after `today`, as comparable text.
        fn documents_from(&self, live: &Live, from: NaiveDate, today: NaiveDate) -> Vec<String> {
            let now = self.cal.day_start(today).to_utc();
            let to = NaiveDate::from_ymd_opt(today.year() + 1, 12, 31).unwrap();
            let mut out = Vec::new();
            for user in [self.user, self.other] {
                for c in live.compute(user, &Kind::ALL, from, to, today, today, now) {
                    if let Write::Upsert { set, .. } = c.write {
                        let content: Document = (set.to_document().unwrap())
                            .into_iter()
                            .filter(|(k, _)| !BOOKKEEPING.contains(&k.as_str()))
                            .collect();
                        out.push(format!("{:?} {} {content}", c.kind, c.period));
                    }
                }
            }
            out
        }
    }

    #[test]
    fn edits_applied_as_events_build_what_a_fresh_load_builds() {
        let w = World::new();
        let a = w.tx(w.user, "10", "2026-10-05", 9);
        let b = w.tx(w.user, "20", "2026-11-02", 23);
        let c = w.tx(w.other, "5", "2026-11-19", 1);
        let mut live = w.load(&[a.clone(), b.clone(), c.clone()]);

        // a moves a month and grows; b is soft-deleted; c changes owner;
        // d is new; e is dated before the window (not held: reported).
        let mut a2 = a.clone();
        a2.date = w.tx(w.user, "0", "2026-11-10", 12).date;
        a2.amount = "12.5".parse().unwrap();
        let mut b2 = b.clone();
        b2.deleted = true;
        let mut c2 = c.clone();
        c2.user_id = w.user;
        c2.pocket_from = Some(w.pocket.id);
        let d = w.tx(w.other, "7.25", "2026-11-20", 8);
        let e = w.tx(w.user, "3", "2026-09-30", 8);

        let (touched, known) = live.set_transaction(&a.id, Some(&a2));
        assert!(known);
        assert_eq!(
            touched,
            vec![(w.user, day("2026-10-05")), (w.user, day("2026-11-10"))]
        );
        assert!(live.set_transaction(&b.id, Some(&b2)).1);
        let (touched, _) = live.set_transaction(&c.id, Some(&c2));
        assert_eq!(
            touched,
            vec![(w.other, day("2026-11-19")), (w.user, day("2026-11-19"))]
        );
        assert!(!live.set_transaction(&d.id, Some(&d)).1);
        // Replaying an event changes nothing.
        live.set_transaction(&d.id, Some(&d));
        let (touched, known) = live.set_transaction(&e.id, Some(&e));
        assert!(!known);
        assert_eq!(touched, vec![(w.user, day("2026-09-30"))]);
        assert_eq!(live.transaction_count(), 4, "e is outside the window");

        let fresh = w.load(&[a2, b2, c2, d.clone()]);
        let incremental = w.documents(&live);
        assert!(!incremental.is_empty());
        assert_eq!(incremental, w.documents(&fresh));

        // A hard delete retracts exactly what the transaction added.
        live.set_transaction(&d.id, None);
        let without_d = w.documents(&live);
        assert_ne!(without_d, incremental);
        live.set_transaction(&d.id, Some(&d));
        assert_eq!(w.documents(&live), incremental);
    }

    #[test]
    fn reloading_a_user_keeps_every_owner_pointing_at_its_state() {
        let w = World::new();
        let a = w.tx(w.user, "10", "2026-10-05", 9);
        let c = w.tx(w.other, "5", "2026-11-19", 1);
        let mut live = w.load(&[a.clone(), c.clone()]);
        let before = w.documents(&live);
        // Reloading the first user moves the other into its place; reload
        // both a few times, in turn, to shuffle them.
        for user in [w.user, w.user, w.other, w.user] {
            let (txs, pocket) = if user == w.user {
                (vec![a.clone()], &w.pocket)
            } else {
                (vec![c.clone()], &w.other_pocket)
            };
            let kept = Kept {
                transactions: txs,
                pockets: [(pocket.id, pocket.clone())].into_iter().collect(),
                stored: Vec::new(),
                baseline: YtdBaseline {
                    from: day("2026-10-01"),
                    income: Money::ZERO,
                    expense: "100".parse().unwrap(),
                },
            };
            assert!(live.insert(user, kept).is_empty());
            assert_eq!(w.documents(&live), before);
            assert_eq!((live.user_count(), live.transaction_count()), (2, 2));
        }
        // Every owner still finds its transaction and pocket.
        let (touched, known) = live.set_transaction(&c.id, None);
        assert!(known);
        assert_eq!(touched, vec![(w.other, day("2026-11-19"))]);
        let (touched, known) = live.set_transaction(&a.id, None);
        assert!(known);
        assert_eq!(touched, vec![(w.user, day("2026-10-05"))]);
        let mut richer = w.other_pocket.clone();
        richer.balance = Ok("71".parse().unwrap());
        assert!(live.balance_only(&richer));
        assert!(live.balance_only(&w.other_pocket), "the same pocket");
        let renamed = Pocket {
            name: Some("renamed".into()),
            ..richer.clone()
        };
        let closed = Pocket {
            deleted_at: Some(1),
            ..richer.clone()
        };
        let unknown = Pocket {
            id: ObjectId::new(),
            ..richer.clone()
        };
        for other in [renamed, closed, unknown] {
            assert!(!live.balance_only(&other), "{other:?}");
        }
        assert_eq!(
            live.set_pocket(richer.id, Some(&richer)),
            (vec![w.other], true)
        );
        assert_eq!(live.set_pocket(w.pocket.id, None), (vec![w.user], true));
        assert_eq!(live.set_pocket(w.pocket.id, None), (vec![], false));
    }

    #[test]
    fn a_rescan_that_takes_a_pocket_and_a_transaction_displaces_their_old_owner() {
        let w = World::new();
        let tx = w.tx(w.user, "12.5", "2026-11-03", 10);
        let mut live = w.load(std::slice::from_ref(&tx));
        // The source now says: the pocket and the transaction are `other`'s.
        let mut pocket = w.pocket.clone();
        pocket.user_id = Some(w.other);
        let mut moved = tx.clone();
        moved.user_id = w.other;
        let displaced = live.insert(
            w.other,
            Kept {
                transactions: vec![moved.clone()],
                pockets: [
                    (pocket.id, pocket.clone()),
                    (w.other_pocket.id, w.other_pocket.clone()),
                ]
                .into_iter()
                .collect(),
                stored: Vec::new(),
                baseline: YtdBaseline {
                    from: day("2026-10-01"),
                    income: Money::ZERO,
                    expense: "100".parse().unwrap(),
                },
            },
        );
        assert_eq!(displaced, vec![w.user], "the old owner is told");
        // What a fresh load of the same source builds.
        let mut fresh = Live::new(
            w.cal,
            day("2026-10-01"),
            day("2026-10-01"),
            Categories::default(),
        );
        for (user, txs, pockets) in [
            (w.user, vec![], vec![]),
            (w.other, vec![moved], vec![pocket, w.other_pocket.clone()]),
        ] {
            let _ = fresh.insert(
                user,
                Kept {
                    transactions: txs,
                    pockets: pockets.into_iter().map(|p| (p.id, p)).collect(),
                    stored: Vec::new(),
                    baseline: YtdBaseline {
                        from: day("2026-10-01"),
                        income: Money::ZERO,
                        expense: "100".parse().unwrap(),
                    },
                },
            );
        }
        assert_eq!(w.documents(&live), w.documents(&fresh));
        assert!(live.insert(w.user, Kept::default()).is_empty());
    }

    #[test]
    fn sliding_the_window_keeps_every_later_document() {
        let w = World::new();
        let txs = [
            w.tx(w.user, "10", "2026-10-05", 9),
            w.tx(w.user, "20", "2026-10-31", 23),
            w.tx(w.user, "5", "2026-11-03", 1),
            w.tx(w.other, "7", "2026-11-19", 1),
        ];
        let mut live = w.load(&txs);
        let from_november = |docs: Vec<String>| -> Vec<String> {
            docs.into_iter()
                .filter(|d| !d.contains(" 2026-10-"))
                .collect()
        };
        let before = from_november(w.documents(&live));
        live.slide(day("2026-11-01"));
        assert_eq!(live.from(), day("2026-11-01"));
        assert_eq!(live.transaction_count(), 2);
        let after = w.documents(&live);
        assert!(after.iter().all(|d| !d.contains(" 2026-10-")));
        assert!(!after.is_empty());
        // Year-to-date figures carry October's expense in the baseline.
        assert_eq!(after, before);
        // Sliding back is a no-op.
        live.slide(day("2026-10-01"));
        assert_eq!(live.from(), day("2026-11-01"));
    }

    /// The anchors' key is kept between questions (`UserState::anchors`):
    /// every change of a user's transactions or pockets must forget it.
    /// Each step below notes both users computed (which keeps their keys),
    /// changes something, and asks whether the anchors moved; a key left
    /// stale answers "no" (and trips `anchors_key`'s debug check).
    #[test]
    fn every_change_of_transactions_or_pockets_moves_the_anchors() {
        let w = World::new();
        let a = w.tx(w.user, "10", "2026-10-05", 9);
        let b = w.tx(w.other, "4", "2026-10-20", 9);
        let mut live = w.load(&[a.clone(), b.clone()]);
        let note = |live: &mut Live| {
            for user in [w.user, w.other] {
                live.note_computed(&user);
                assert!(!live.anchors_moved(&user));
            }
        };
        let moved = |live: &Live| [w.user, w.other].map(|u| live.anchors_moved(&u));

        note(&mut live);
        let d = w.tx(w.user, "7", "2026-11-02", 9);
        live.set_transaction(&d.id, Some(&d));
        assert_eq!(moved(&live), [true, false], "a new transaction");

        note(&mut live);
        let mut d2 = d.clone();
        d2.amount = "8".parse().unwrap();
        live.set_transaction(&d.id, Some(&d2));
        assert_eq!(moved(&live), [true, false], "an edited amount");

        note(&mut live);
        live.set_transaction(&d.id, None);
        assert_eq!(moved(&live), [true, false], "a hard delete");

        note(&mut live);
        let mut richer = w.pocket.clone();
        richer.balance = Ok("600".parse().unwrap());
        live.set_pocket(richer.id, Some(&richer));
        assert_eq!(moved(&live), [true, false], "a new balance");

        note(&mut live);
        let mut moved_pocket = w.other_pocket.clone();
        moved_pocket.user_id = Some(w.user);
        live.set_pocket(moved_pocket.id, Some(&moved_pocket));
        assert_eq!(moved(&live), [true, true], "a pocket changing hands");

        // Rescans of `other` that take `a`, then the pocket, from `user`.
        let mut a2 = a.clone();
        a2.user_id = w.other;
        let rescan = |pockets: &[&Pocket]| Kept {
            transactions: vec![a2.clone(), b.clone()],
            pockets: pockets.iter().map(|p| (p.id, (*p).clone())).collect(),
            stored: Vec::new(),
            baseline: YtdBaseline::default(),
        };
        note(&mut live);
        live.insert(w.other, rescan(&[]));
        assert!(
            live.anchors_moved(&w.user),
            "a transaction taken by a rescan"
        );
        note(&mut live);
        live.insert(w.other, rescan(&[&w.other_pocket]));
        assert!(live.anchors_moved(&w.user), "a pocket taken by a rescan");

        // Sliding past every transaction of `other`: anchors noted before
        // are carried to the new eve, and the key matches them there.
        note(&mut live);
        live.slide(day("2026-11-01"));
        assert_eq!(moved(&live), [false, false], "a slide");
    }

    /// A computation from a later month folds only the transactions from
    /// that month's 1st, with the year-to-date sums of the earlier ones
    /// (`UserState::ledger_from`): within a year and across a new year.
    #[test]
    fn a_computation_from_a_later_month_builds_what_the_whole_window_builds() {
        let w = World::new();
        let income = |amount: &str, date: &str, hour: i64| Transaction {
            kind: TxType::Income,
            pocket_from: None,
            pocket_to: Some(w.pocket.id),
            ..w.tx(w.user, amount, date, hour)
        };
        // The documents of days from `first` on, and of months from its month on.
        let later = |docs: Vec<String>, first: &str| -> Vec<String> {
            let first = day(first);
            docs.into_iter()
                .filter(|d| {
                    let period = day(d.split(' ').nth(1).unwrap());
                    match d.starts_with("Monthly") {
                        true => period >= first_of_month(first),
                        false => period >= first,
                    }
                })
                .collect()
        };
        let mut deleted = w.tx(w.user, "1000", "2026-10-09", 3);
        deleted.deleted = true;
        let txs = [
            w.tx(w.user, "10", "2026-10-05", 9),
            income("250.5", "2026-10-20", 12),
            deleted,
            w.tx(w.user, "5", "2026-11-03", 1),
            income("40", "2026-11-19", 8),
            w.tx(w.other, "7", "2026-10-19", 1),
            w.tx(w.other, "8", "2026-11-20", 1),
        ];
        let live = w.load(&txs);
        let today = day("2026-11-20");
        let whole = w.documents_from(&live, day("2026-10-01"), today);
        for from in ["2026-11-01", "2026-11-15", "2026-11-20"] {
            let part = w.documents_from(&live, day(from), today);
            assert!(part.iter().any(|d| d.contains("ytd_income")));
            assert_eq!(part, later(whole.clone(), from), "from {from}");
        }

        // A window from December: January's year-to-date sums start at 0.
        let mut live = Live::new(
            w.cal,
            day("2026-12-01"),
            day("2026-12-01"),
            Categories::default(),
        );
        let txs = [
            income("300", "2026-12-02", 9),
            w.tx(w.user, "30", "2026-12-31", 23),
            w.tx(w.user, "12", "2027-01-02", 1),
            income("20", "2027-01-10", 5),
        ];
        live.insert(
            w.user,
            Kept {
                transactions: txs.to_vec(),
                pockets: [(w.pocket.id, w.pocket.clone())].into_iter().collect(),
                stored: Vec::new(),
                baseline: YtdBaseline {
                    from: day("2026-12-01"),
                    income: "1000".parse().unwrap(),
                    expense: "100".parse().unwrap(),
                },
            },
        );
        let today = day("2027-01-12");
        let whole = w.documents_from(&live, day("2026-12-01"), today);
        let part = w.documents_from(&live, day("2027-01-05"), today);
        assert!(part.iter().any(|d| d.contains("2027-01-01")));
        assert_eq!(part, later(whole, "2027-01-05"));
    }

    #[test]
    fn recorded_writes_make_the_next_compute_a_no_op() {
        let w = World::new();
        let mut live = w.load(&[w.tx(w.user, "10", "2026-11-05", 9)]);
        let now = w.cal.day_start(day("2026-11-20")).to_utc();
        let today = day("2026-11-20");
        let compute = |live: &Live| {
            live.compute(
                w.user,
                &Kind::ALL,
                day("2026-10-01"),
                day("2026-12-31"),
                today,
                today,
                now,
            )
        };
        let first = compute(&live);
        assert!(first.iter().all(|c| c.difference == Difference::Missing));
        assert!(first.iter().any(|c| c.kind == Kind::Snapshot));
        let writes: Vec<_> = first
            .into_iter()
            .map(|c| (c.user, c.period, c.write))
            .collect();
        live.record(&writes);
        assert_eq!(compute(&live), Vec::new());

        // A pocket balance change moves every closed day's balances.
        let mut pocket = w.pocket.clone();
        pocket.balance = Ok("400".parse().unwrap());
        let (users, known) = live.set_pocket(pocket.id, Some(&pocket));
        assert!(known);
        assert_eq!(users, vec![w.user]);
        let changes = compute(&live);
        assert!(changes.iter().all(|c| c.difference == Difference::Content));
        let snapshots = changes.iter().filter(|c| c.kind == Kind::Snapshot).count();
        assert_eq!(snapshots, 50, "every closed day from 1 October on");
        // Revisions continue from the recorded ones.
        assert!(changes.iter().all(|c| matches!(&c.write,
            Write::Upsert { if_revision: Some(1), set, .. } if set.get_i64("revision") == Ok(2))));
    }
}
