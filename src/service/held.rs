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

use crate::core::money::Money;
use crate::core::source::{SourceId, Transaction, TxType};
use crate::core::vecmap::Keyed;

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
/// Transaction ids are ObjectIds but for rare legacy ones: keyed by the
/// bare ObjectId, an entry is 16 bytes instead of the 32 of a `SourceId`
/// key and an owner's ObjectId (a hash table of 550,000 entries has a
/// million buckets: 16 MiB less).
#[derive(Debug, Default)]
pub struct TxOwners {
    oid: HashMap<ObjectId, Slot>,
    other: HashMap<SourceId, Slot>,
}

impl TxOwners {
    pub fn get(&self, id: &SourceId) -> Option<&Slot> {
        match id {
            SourceId::Oid(o) => self.oid.get(o),
            other => self.other.get(other),
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
        self.oid.clear();
        self.other.clear();
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
        assert_eq!(
            (owners.get(&oid), owners.get(&legacy)),
            (Some(&v), Some(&v))
        );
        assert_eq!(owners.len(), 2);
        assert_eq!(owners.remove(&legacy), Some(v));
        assert_eq!(owners.get(&legacy), None);
        owners.clear();
        assert!(owners.is_empty());
        assert_eq!(owners.get(&oid), None);
    }
}
