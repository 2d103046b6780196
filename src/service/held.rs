//! The compact forms the live window holds its many small things in
//! (issue 13, target 4: memory per user): a transaction without its user
//! and with the ids it names as indexes, and the index of transaction
//! owners keyed by the bare ObjectId, the owner as a 4-byte [`Slot`].
//!
//! A [`Transaction`] as decoded is 112 bytes: `user_id` and three
//! `Option<ObjectId>` (13 bytes each, padded) are most of it. The window
//! knows the user from the state that holds the transaction, and a user's
//! transactions name a handful of pockets and categories again and again,
//! so [`Held`] keeps them as 4-byte indexes into the user's [`Refs`]:
//! 72 bytes. A flush expands a user's held transactions back into
//! `Transaction`s to fold them (a copy of a few fields each; the note is
//! shared, not copied).

use std::collections::HashMap;
use std::sync::Arc;

use bson::oid::ObjectId;

use crate::core::ledger::TxRef;
use crate::core::money::Money;
use crate::core::source::{SourceId, Transaction, TxType};
use crate::core::vecmap::{grow_by_an_eighth, Keyed};

/// A transaction held in one user's window: [`Transaction`] without
/// `user_id`, its pockets and category as indexes into the user's
/// [`Refs`].
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    id: SourceId,
    amount: Money,
    note: Option<Arc<str>>,
    date: i64,
    pocket_from: Ref,
    pocket_to: Ref,
    category_id: Ref,
    kind: TxType,
    deleted: bool,
}

impl Held {
    pub fn id(&self) -> &SourceId {
        &self.id
    }

    /// Business date, milliseconds since the epoch.
    pub fn date(&self) -> i64 {
        self.date
    }

    pub fn kind(&self) -> TxType {
        self.kind
    }

    pub fn amount(&self) -> Money {
        self.amount
    }

    /// Not soft-deleted: counted (contract §1.2).
    pub fn is_live(&self) -> bool {
        !self.deleted
    }
}

impl Keyed for Held {
    type Key = SourceId;
    fn key(&self) -> &SourceId {
        &self.id
    }
}

/// An index into [`Refs`] plus one; 0 is no id.
type Ref = u32;

/// The ObjectIds one user's held transactions name (pockets and
/// categories), each once, in order of first use. Entries are never
/// removed while the user is held: a reload or a slide of the window
/// builds a fresh table. Lookups walk the table: a user names some ten
/// ids.
#[derive(Clone, Debug, Default)]
pub struct Refs(Vec<ObjectId>);

impl Refs {
    fn index(&mut self, id: Option<ObjectId>) -> Ref {
        let Some(id) = id else { return 0 };
        let i = match self.0.iter().position(|r| *r == id) {
            Some(i) => i,
            None => {
                self.0.push(id);
                self.0.len() - 1
            }
        };
        Ref::try_from(i + 1).expect("fewer than 2^32 ids per user")
    }

    fn get(&self, r: Ref) -> Option<ObjectId> {
        r.checked_sub(1).map(|i| self.0[i as usize])
    }

    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }

    /// `tx` held: its ids indexed here.
    pub fn hold(&mut self, tx: &Transaction) -> Held {
        Held {
            id: tx.id.clone(),
            amount: tx.amount,
            note: tx.note.clone(),
            date: tx.date,
            pocket_from: self.index(tx.pocket_from),
            pocket_to: self.index(tx.pocket_to),
            category_id: self.index(tx.category_id),
            kind: tx.kind,
            deleted: tx.deleted,
        }
    }

    /// `held`'s `pocket_from` and `pocket_to`.
    pub fn pockets(&self, held: &Held) -> (Option<ObjectId>, Option<ObjectId>) {
        (self.get(held.pocket_from), self.get(held.pocket_to))
    }

    /// The live transaction `held` stands for, as the ledger folds it.
    pub fn view<'a>(&self, held: &'a Held) -> TxRef<'a> {
        TxRef {
            id: &held.id,
            kind: held.kind,
            amount: held.amount,
            pocket_from: self.get(held.pocket_from),
            pocket_to: self.get(held.pocket_to),
            category_id: self.get(held.category_id),
            note: held.note.as_ref(),
            date: held.date,
        }
    }

    /// The transaction `held` stands for, of `user`.
    pub fn expand(&self, user: ObjectId, held: &Held) -> Transaction {
        Transaction {
            id: held.id.clone(),
            user_id: user,
            kind: held.kind,
            amount: held.amount,
            pocket_from: self.get(held.pocket_from),
            pocket_to: self.get(held.pocket_to),
            category_id: self.get(held.category_id),
            note: held.note.clone(),
            date: held.date,
            deleted: held.deleted,
        }
    }
}

/// Where the window keeps a user's state: an index into its states.
pub type Slot = u32;

/// Which user (its [`Slot`]) holds each transaction of the window.
/// Transaction ids are ObjectIds but for rare legacy ones, kept apart in
/// a plain hash map.
#[derive(Debug, Default)]
pub struct TxOwners {
    oid: OidOwners,
    other: HashMap<SourceId, Slot>,
}

impl TxOwners {
    pub fn get(&self, id: &SourceId) -> Option<Slot> {
        match id {
            SourceId::Oid(o) => self.oid.get(o),
            other => self.other.get(other).copied(),
        }
    }

    /// Sets `id`'s owner; returns the previous one.
    pub fn insert(&mut self, id: &SourceId, owner: Slot) -> Option<Slot> {
        match id {
            SourceId::Oid(o) => self.oid.insert(*o, owner),
            other => self.other.insert(other.clone(), owner),
        }
    }

    pub fn remove(&mut self, id: &SourceId) -> Option<Slot> {
        match id {
            SourceId::Oid(o) => self.oid.remove(o),
            other => self.other.remove(other),
        }
    }

    pub fn len(&self) -> usize {
        self.oid.len() + self.other.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.oid = OidOwners::default();
        self.other.clear();
    }
}

/// The owner of a removed entry of [`OidOwners::sorted`]: no user.
const GONE: Slot = Slot::MAX;

/// Owners keyed by ObjectId in 16 bytes an entry (issue 13, target 4).
///
/// A hash map of these entries took 16 bytes a bucket at about half load:
/// 1.7 KiB a user at 55 transactions. Here most entries sit in a vector
/// sorted by id (binary search; a removal leaves a [`GONE`] tombstone), and
/// entries inserted since the last merge in a small hash map, merged into
/// the vector once they pass an eighth of it. ObjectIds grow with time, so
/// a new transaction's id is mostly past the vector's last and is pushed
/// there directly. The vector grows by an eighth, not by doubling.
#[derive(Debug)]
struct OidOwners {
    sorted: Vec<(ObjectId, Slot)>,
    recent: foldhash::HashMap<ObjectId, Slot>,
    /// Tombstones in `sorted`.
    gone: usize,
    /// Fewest entries `recent` (and tombstones) reach before a merge, so
    /// that a small window is not merged at every insert.
    min_merge: usize,
}

impl Default for OidOwners {
    fn default() -> Self {
        OidOwners::with_min_merge(1024)
    }
}

impl OidOwners {
    fn with_min_merge(min_merge: usize) -> Self {
        OidOwners {
            sorted: Vec::new(),
            recent: foldhash::HashMap::default(),
            gone: 0,
            min_merge,
        }
    }

    fn find(&self, id: &ObjectId) -> Result<usize, usize> {
        match self.sorted.last() {
            // A new transaction's id, mostly: past the last, without a
            // search whose probes miss the cache in a vector this large.
            Some(&(last, _)) if last < *id => Err(self.sorted.len()),
            _ => self.sorted.binary_search_by_key(id, |&(k, _)| k),
        }
    }

    fn get(&self, id: &ObjectId) -> Option<Slot> {
        if let Some(&slot) = self.recent.get(id) {
            return Some(slot);
        }
        let i = self.find(id).ok()?;
        Some(self.sorted[i].1).filter(|&s| s != GONE)
    }

    fn insert(&mut self, id: ObjectId, owner: Slot) -> Option<Slot> {
        assert_ne!(owner, GONE, "slot {GONE} marks a removed entry");
        match self.find(&id) {
            Ok(i) => {
                let old = std::mem::replace(&mut self.sorted[i].1, owner);
                if old == GONE {
                    self.gone -= 1;
                    None
                } else {
                    Some(old)
                }
            }
            Err(i) if i == self.sorted.len() => {
                // An id waits in `recent` only if it is below a key of
                // `sorted`, which stays (a tombstone at worst) until the
                // merge empties `recent`: an id past the last is not there.
                debug_assert!(!self.recent.contains_key(&id));
                grow_by_an_eighth(&mut self.sorted, self.min_merge);
                self.sorted.push((id, owner));
                None
            }
            Err(_) => {
                let old = self.recent.insert(id, owner);
                if self.recent.len() > self.min_merge.max(self.sorted.len() / 8) {
                    self.merge();
                }
                old
            }
        }
    }

    fn remove(&mut self, id: &ObjectId) -> Option<Slot> {
        if let Some(slot) = self.recent.remove(id) {
            return Some(slot);
        }
        let i = self.find(id).ok()?;
        let old = std::mem::replace(&mut self.sorted[i].1, GONE);
        if old == GONE {
            return None;
        }
        self.gone += 1;
        if self.gone > self.min_merge.max(self.sorted.len() / 4) {
            self.merge();
        }
        Some(old)
    }

    fn len(&self) -> usize {
        self.sorted.len() - self.gone + self.recent.len()
    }

    /// Moves `recent` into `sorted` and drops the tombstones, in place:
    /// the vector grows by the new entries only, then is merged from the
    /// back.
    fn merge(&mut self) {
        self.sorted.retain(|&(_, slot)| slot != GONE);
        self.gone = 0;
        let mut new: Vec<(ObjectId, Slot)> = self.recent.drain().collect();
        self.recent.shrink_to_fit();
        new.sort_unstable_by_key(|e| e.0);
        let old_len = self.sorted.len();
        // Exactly: `resize` alone may double the vector.
        self.sorted.reserve_exact(new.len());
        self.sorted
            .resize(old_len + new.len(), (ObjectId::from_bytes([0; 12]), GONE));
        let (mut i, mut j) = (old_len, new.len());
        for k in (0..self.sorted.len()).rev() {
            // `new` holds no id of `sorted`: an insert of a held id
            // replaces its owner there.
            self.sorted[k] = if j == 0 || (i > 0 && self.sorted[i - 1].0 > new[j - 1].0) {
                i -= 1;
                self.sorted[i]
            } else {
                j -= 1;
                new[j]
            };
            if j == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::Bson;

    fn tx(from: Option<ObjectId>, to: Option<ObjectId>, category: Option<ObjectId>) -> Transaction {
        Transaction {
            id: SourceId::Oid(ObjectId::new()),
            user_id: ObjectId::new(),
            kind: TxType::Transfer,
            amount: "12.305".parse().unwrap(),
            pocket_from: from,
            pocket_to: to,
            category_id: category,
            note: Some("rent".into()),
            date: 1_780_000_000_000,
            deleted: true,
        }
    }

    #[test]
    fn a_held_transaction_expands_to_the_one_held() {
        let (a, b, c) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
        let mut refs = Refs::default();
        let txs = [
            tx(Some(a), Some(b), Some(c)),
            tx(Some(b), None, None),
            tx(None, Some(a), Some(c)),
            tx(Some(a), Some(a), None),
        ];
        let held: Vec<Held> = txs.iter().map(|t| refs.hold(t)).collect();
        for (t, h) in txs.iter().zip(&held) {
            assert_eq!(refs.expand(t.user_id, h), *t);
        }
        // Each id is indexed once, however often it is named.
        assert_eq!(refs.0, vec![a, b, c]);
        assert!(
            std::mem::size_of::<Held>() <= 72,
            "{}",
            std::mem::size_of::<Held>()
        );
    }

    #[test]
    fn owners_of_legacy_ids_are_kept_apart_from_objectid_ones() {
        let mut owners = TxOwners::default();
        let (u, v) = (7, 9);
        let oid = SourceId::Oid(ObjectId::new());
        let legacy = SourceId::from_bson(&Bson::String("t-1".into()));
        assert_eq!(owners.insert(&oid, u), None);
        assert_eq!(owners.insert(&legacy, v), None);
        assert_eq!(owners.insert(&oid, v), Some(u));
        assert_eq!((owners.get(&oid), owners.get(&legacy)), (Some(v), Some(v)));
        assert_eq!(owners.len(), 2);
        assert_eq!(owners.remove(&legacy), Some(v));
        assert_eq!(owners.get(&legacy), None);
        owners.clear();
        assert!(owners.is_empty());
        assert_eq!(owners.get(&oid), None);
    }

    /// Inserts and removals in any order, small merge thresholds so that
    /// merges and tombstone sweeps happen often: the same answers as a
    /// plain hash map after every step.
    #[test]
    fn oid_owners_answer_as_a_hash_map_does() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        // Ids in time order, as the server makes them: an op names one by
        // index, so that low indexes land inside the sorted run.
        let ids: Vec<ObjectId> = (0..64u8)
            .map(|i| ObjectId::from_bytes([0, 0, 0, i, 1, 2, 3, 4, 5, 6, 7, 8]))
            .collect();
        let op = (any::<bool>(), 0..ids.len(), 0..5u32);
        let mut runner = TestRunner::new(Config::with_cases(512));
        runner
            .run(
                &(1..4usize, prop::collection::vec(op, 0..300)),
                |(min, ops)| {
                    let mut owners = OidOwners::with_min_merge(min);
                    let mut model: HashMap<ObjectId, Slot> = HashMap::new();
                    for (insert, i, slot) in ops {
                        let id = ids[i];
                        if insert {
                            prop_assert_eq!(owners.insert(id, slot), model.insert(id, slot));
                        } else {
                            prop_assert_eq!(owners.remove(&id), model.remove(&id));
                        }
                        prop_assert_eq!(owners.len(), model.len());
                        for id in &ids {
                            prop_assert_eq!(owners.get(id), model.get(id).copied());
                        }
                        prop_assert!(owners.sorted.windows(2).all(|w| w[0].0 < w[1].0));
                        // An id sits in one of the two places, never both.
                        prop_assert!(owners.recent.keys().all(|k| owners.find(k).is_err()));
                    }
                    Ok(())
                },
            )
            .unwrap();
    }
}
