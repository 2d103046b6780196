//! A small ordered map kept as a sorted vector.
//!
//! A day of one user has a handful of categories, pockets and transactions;
//! for maps that small a sorted `Vec` is several times faster than a
//! `BTreeMap` (one allocation, contiguous, binary search) and iterates in
//! the same key order, which is what the report sort orders need.

use std::fmt;
use std::ops::Index;

/// A map kept as a sorted vector; a single entry is stored inline.
///
/// Most maps of a day's ledger hold one entry (one pocket's transaction, one
/// category); keeping that entry inline saves an allocation and a pointer
/// chase per map, which is most of the cost of folding transactions in
/// random user order. Equality is by content, whatever the storage.
#[derive(Clone)]
pub struct VecMap<K, V> {
    store: Store<K, V>,
}

#[derive(Clone)]
enum Store<K, V> {
    Empty,
    One((K, V)),
    Many(Vec<(K, V)>),
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap {
            store: Store::Empty,
        }
    }
}

impl<K, V> VecMap<K, V> {
    fn as_slice(&self) -> &[(K, V)] {
        match &self.store {
            Store::Empty => &[],
            Store::One(e) => std::slice::from_ref(e),
            Store::Many(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [(K, V)] {
        match &mut self.store {
            Store::Empty => &mut [],
            Store::One(e) => std::slice::from_mut(e),
            Store::Many(v) => v,
        }
    }

    /// Inserts at position `i` (the caller keeps the order).
    fn insert_at(&mut self, i: usize, entry: (K, V)) {
        match std::mem::replace(&mut self.store, Store::Empty) {
            Store::Empty => self.store = Store::One(entry),
            Store::One(first) => {
                // Room for four: a map that grows past one entry mostly
                // grows past two (a month's categories, a busy day's
                // pockets), and each growth is a reallocation.
                let mut v = Vec::with_capacity(4);
                if i == 0 {
                    v.push(entry);
                    v.push(first);
                } else {
                    v.push(first);
                    v.push(entry);
                }
                self.store = Store::Many(v);
            }
            Store::Many(mut v) => {
                v.insert(i, entry);
                self.store = Store::Many(v);
            }
        }
    }

    fn remove_at(&mut self, i: usize) -> (K, V) {
        match std::mem::replace(&mut self.store, Store::Empty) {
            Store::Empty => unreachable!("remove_at on an empty VecMap"),
            Store::One(e) => e,
            Store::Many(mut v) => {
                let e = v.remove(i);
                if !v.is_empty() {
                    self.store = Store::Many(v);
                }
                e
            }
        }
    }

    /// Entries in ascending key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.as_slice().iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.as_slice().iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.as_slice().iter().map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        matches!(self.store, Store::Empty)
    }
}

impl<K: Ord, V> VecMap<K, V> {
    fn search(&self, key: &K) -> Result<usize, usize> {
        match &self.store {
            Store::Empty => Err(0),
            Store::One((k, _)) => match key.cmp(k) {
                std::cmp::Ordering::Less => Err(0),
                std::cmp::Ordering::Equal => Ok(0),
                std::cmp::Ordering::Greater => Err(1),
            },
            Store::Many(v) => v.binary_search_by(|(k, _)| k.cmp(key)),
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.search(key).ok().map(|i| &self.as_slice()[i].1)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.search(key).ok().map(|i| &mut self.as_mut_slice()[i].1)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.search(key).is_ok()
    }

    /// The value at `key`, inserted as `V::default()` when absent.
    pub fn entry_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        let i = match self.search(&key) {
            Ok(i) => i,
            Err(i) => {
                self.insert_at(i, (key, V::default()));
                i
            }
        };
        &mut self.as_mut_slice()[i].1
    }

    /// Inserts or replaces.
    pub fn insert(&mut self, key: K, value: V) {
        match self.search(&key) {
            Ok(i) => self.as_mut_slice()[i].1 = value,
            Err(i) => self.insert_at(i, (key, value)),
        }
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.search(key).ok().map(|i| self.remove_at(i).1)
    }
}

impl<K: PartialEq, V: PartialEq> PartialEq for VecMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for VecMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Ord, V> Index<&K> for VecMap<K, V> {
    type Output = V;

    fn index(&self, key: &K) -> &V {
        self.get(key).expect("key present in VecMap")
    }
}

impl<'a, K, V> IntoIterator for &'a VecMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter().map(|(k, v)| (k, v))
    }
}

/// Makes room for one more value in a full `v` by an eighth of its length
/// (at least `min`) instead of doubling it, so that a vector that is held
/// for long stays within an eighth of its length.
pub fn grow_by_an_eighth<T>(v: &mut Vec<T>, min: usize) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.len() / 8).max(min));
    }
}

/// A value that carries its own key: an entry of a [`Sorted`].
pub trait Keyed {
    type Key: Ord;
    fn key(&self) -> &Self::Key;
}

/// Values sorted by their key in one vector, for maps that hold many
/// values per user for a long time (the live window's transactions and
/// fingerprints): no node overhead of a `BTreeMap`, no key stored apart
/// from the value, and growth by an eighth instead of doubling, so a
/// vector stays within an eighth of its length. Inserting is a shift of
/// the entries after it; the maps are tens of entries.
#[derive(Clone, Debug)]
pub struct Sorted<T>(Vec<T>);

impl<T> Default for Sorted<T> {
    fn default() -> Self {
        Sorted(Vec::new())
    }
}

impl<T: Keyed> Sorted<T> {
    /// Of values in any order; of two with one key the later wins, as it
    /// would in a map.
    pub fn from_unsorted(mut values: Vec<T>) -> Sorted<T> {
        values.reverse();
        values.sort_by(|a, b| a.key().cmp(b.key()));
        values.dedup_by(|a, b| a.key() == b.key());
        Sorted::from_sorted(values)
    }

    /// `values` already sorted by key, each key once (checked in debug
    /// builds): kept as they are, without a second sort.
    pub fn from_sorted(mut values: Vec<T>) -> Sorted<T> {
        debug_assert!(values.windows(2).all(|w| w[0].key() < w[1].key()));
        values.shrink_to_fit();
        Sorted(values)
    }

    fn find(&self, key: &T::Key) -> Result<usize, usize> {
        // Keys that grow with time (ObjectIds, days) are mostly inserted
        // past the last: found with one line read, not a search's several.
        match self.0.last() {
            Some(last) if last.key() < key => Err(self.0.len()),
            _ => self.0.binary_search_by(|v| v.key().cmp(key)),
        }
    }

    pub fn get(&self, key: &T::Key) -> Option<&T> {
        self.find(key).ok().map(|i| &self.0[i])
    }

    /// Inserts or replaces the value of the same key; returns the value
    /// replaced.
    pub fn insert(&mut self, value: T) -> Option<T> {
        match self.find(value.key()) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i], value)),
            Err(i) => {
                grow_by_an_eighth(&mut self.0, 1);
                self.0.insert(i, value);
                None
            }
        }
    }

    pub fn remove(&mut self, key: &T::Key) -> Option<T> {
        self.find(key).ok().map(|i| self.0.remove(i))
    }

    pub fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        self.0.retain(keep);
        self.0.shrink_to_fit();
    }

    /// The values with keys in `[lo, hi]`, in key order.
    pub fn range(&self, lo: &T::Key, hi: &T::Key) -> &[T] {
        let a = self.0.partition_point(|v| v.key() < lo);
        // The ranges asked are short (a flush's few days): a walk from
        // `lo`, not a second search from the ends.
        let n = self.0[a..].iter().take_while(|v| v.key() <= hi).count();
        &self.0[a..a + n]
    }

    /// All values, in key order.
    pub fn as_slice(&self) -> &[T] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Ord, V> Keyed for (K, V) {
    type Key = K;
    fn key(&self) -> &K {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::{Sorted, VecMap};

    #[test]
    fn a_sorted_vector_is_a_map_that_grows_by_an_eighth() {
        let mut s = Sorted::from_unsorted(vec![(3, 'a'), (1, 'b'), (3, 'c'), (2, 'd')]);
        assert_eq!(s.as_slice(), &[(1, 'b'), (2, 'd'), (3, 'c')]);
        assert_eq!(s.get(&3), Some(&(3, 'c')));
        s.insert((0, 'e'));
        s.insert((2, 'f'));
        assert_eq!(s.as_slice(), &[(0, 'e'), (1, 'b'), (2, 'f'), (3, 'c')]);
        assert_eq!(s.range(&1, &2), &[(1, 'b'), (2, 'f')]);
        assert_eq!(s.range(&4, &9), &[]);
        assert_eq!(s.range(&2, &1), &[]);
        assert_eq!(s.remove(&1), Some((1, 'b')));
        assert_eq!(s.remove(&1), None);
        s.retain(|(k, _)| *k != 0);
        assert_eq!(s.as_slice(), &[(2, 'f'), (3, 'c')]);
        // Past the last, and equal to it (`find`'s fast path).
        assert_eq!(s.insert((5, 'g')), None);
        assert_eq!(s.insert((5, 'h')), Some((5, 'g')));
        assert_eq!(s.insert((4, 'i')), None);
        assert_eq!(s.get(&5), Some(&(5, 'h')));
        assert_eq!(s.get(&6), None);
        assert_eq!(s.as_slice(), &[(2, 'f'), (3, 'c'), (4, 'i'), (5, 'h')]);
        let mut big = Sorted::from_unsorted((0..64).map(|k| (2 * k, ())).collect());
        for k in 0..10 {
            big.insert((2 * k + 1, ()));
        }
        assert_eq!(big.len(), 74);
        assert!(big.0.capacity() <= 64 + 8 + 9, "{}", big.0.capacity());
    }

    #[test]
    fn keeps_keys_sorted_and_unique() {
        let mut m = VecMap::default();
        for k in [5, 1, 3, 1] {
            *m.entry_or_default(k) += 1;
        }
        assert_eq!(
            m.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(),
            vec![(1, 2), (3, 1), (5, 1)]
        );
        assert_eq!(m.remove(&3), Some(1));
        assert_eq!(m.get(&3), None);
        assert_eq!(m[&5], 1);
        m.insert(0, 9);
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![0, 1, 5]);
    }

    #[test]
    fn equality_ignores_whether_the_single_entry_is_inline() {
        let mut grown = VecMap::default();
        grown.insert(2, "b");
        grown.insert(1, "a");
        assert_eq!(grown.remove(&2), Some("b"));
        let mut fresh = VecMap::default();
        fresh.insert(1, "a");
        assert_eq!(grown, fresh);
        assert_eq!(format!("{grown:?}"), format!("{fresh:?}"));
        assert_eq!(grown.remove(&1), Some("a"));
        assert!(grown.is_empty());
        assert_eq!(grown.len(), 0);
        assert_eq!(grown, VecMap::default());
        assert_eq!(grown.remove(&1), None);
        // Insertion before and after the inline entry keeps the order.
        for (first, second) in [(1, 2), (2, 1)] {
            let mut m: VecMap<i32, i32> = VecMap::default();
            *m.entry_or_default(first) += 10;
            *m.entry_or_default(second) += 20;
            assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
            assert!(m.contains_key(&first) && m.get_mut(&second).is_some());
        }
    }
}
