//! What tally keeps of a stored document instead of the document: a
//! fingerprint of its content and the bookkeeping its next write
//! continues from.

use std::borrow::Cow;
use std::hash::Hasher;

use bson::oid::ObjectId;
use bson::{Bson, Document};

use crate::core::reports::{Kind, BOOKKEEPING};
use crate::plan::compare::{Difference, StoredDoc};
use crate::plan::write::int;

/// What tally needs to know of a stored document: a fingerprint of its
/// content and the bookkeeping its next write continues from.
///
/// Packed (56 bytes instead of 80 with `Option`s): the window holds one per
/// stored document of every user, so its size is most of tally's memory per
/// user after the transactions (BENCHMARKS.md, "Memory per user"). Absent
/// values are sentinels, read back as `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMeta {
    fingerprint: u64,
    revision: i64,
    restatements: i64,
    created_at: i64,
    finalized_at: i64,
    id: [u8; 12],
    flags: u8,
}

/// `flags`: the document has an `_id`; it is final.
const HAS_ID: u8 = 1;
const IS_FINAL: u8 = 2;
/// An absent `revision`, `created_at` or `finalized_at`.
const ABSENT: i64 = i64::MIN;

impl StoredMeta {
    /// The meta of a stored document, or of the `set` of a write.
    pub fn of(kind: Kind, doc: &Document) -> StoredMeta {
        let id = doc.get_object_id("_id").ok();
        let millis = |field: &str| {
            doc.get_datetime(field)
                .map_or(ABSENT, |t| t.timestamp_millis())
        };
        let mut flags = 0;
        if id.is_some() {
            flags |= HAS_ID;
        }
        if doc.get_bool(kind.final_field()).unwrap_or(false) {
            flags |= IS_FINAL;
        }
        StoredMeta {
            fingerprint: fingerprint(doc),
            // A stored revision of i64::MIN reads as none: never written so.
            revision: int(doc.get("revision")).unwrap_or(ABSENT),
            restatements: int(doc.get("restatements")).unwrap_or(0),
            created_at: millis("created_at"),
            finalized_at: millis("finalized_at"),
            id: id.map_or([0; 12], |o| o.bytes()),
            flags,
        }
    }

    /// The fingerprint of the stored content ([`fingerprint`]).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Whether the stored document is final.
    pub fn is_final(&self) -> bool {
        self.flags & IS_FINAL != 0
    }

    fn id(&self) -> Option<ObjectId> {
        (self.flags & HAS_ID != 0).then(|| ObjectId::from_bytes(self.id))
    }
}

/// A sentinel-coded value back as an option.
fn present(v: i64) -> Option<i64> {
    (v != ABSENT).then_some(v)
}

impl StoredDoc for &StoredMeta {
    fn difference(&self, content: &Document) -> Option<Difference> {
        (fingerprint(content) != self.fingerprint).then_some(Difference::Content)
    }

    fn bookkeeping(&self, kind: Kind) -> Cow<'_, Document> {
        let mut d = Document::new();
        if let Some(id) = self.id() {
            d.insert("_id", id);
        }
        if let Some(r) = present(self.revision) {
            d.insert("revision", r);
        }
        d.insert("restatements", self.restatements);
        d.insert(kind.final_field(), self.is_final());
        if let Some(c) = present(self.created_at) {
            d.insert("created_at", bson::DateTime::from_millis(c));
        }
        if let Some(f) = present(self.finalized_at) {
            d.insert("finalized_at", bson::DateTime::from_millis(f));
        }
        Cow::Owned(d)
    }
}

/// A hash of a document's content fields (bookkeeping aside), independent
/// of their order at the top level; values compare exactly (type and bits).
///
/// The fields are written into one buffer in an unambiguous encoding (a
/// type tag per value, lengths before strings, documents and arrays), which
/// is hashed once: SipHash's cost is per call, and a document hashed value
/// by value made hundreds of calls. Fingerprints live in memory only, so
/// the encoding may change between versions.
pub fn fingerprint(doc: &Document) -> u64 {
    let mut fields: Vec<(&String, &Bson)> = doc
        .iter()
        .filter(|(k, _)| !BOOKKEEPING.contains(&k.as_str()))
        .collect();
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    BUFFER.with_borrow_mut(|buf| {
        buf.clear();
        for (k, v) in fields {
            encode_str(k, buf);
            encode_bson(v, buf);
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write(buf);
        h.finish()
    })
}

thread_local! {
    /// The encoding buffer of [`fingerprint`], reused.
    static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn encode_len(n: usize, buf: &mut Vec<u8>) {
    buf.extend_from_slice(&(n as u64).to_le_bytes());
}

fn encode_str(s: &str, buf: &mut Vec<u8>) {
    encode_len(s.len(), buf);
    buf.extend_from_slice(s.as_bytes());
}

fn encode_bson(v: &Bson, buf: &mut Vec<u8>) {
    buf.push(v.element_type() as u8);
    match v {
        Bson::Double(d) => buf.extend_from_slice(&d.to_bits().to_le_bytes()),
        Bson::String(s) => encode_str(s, buf),
        Bson::Document(d) => {
            encode_len(d.len(), buf);
            for (k, v) in d {
                encode_str(k, buf);
                encode_bson(v, buf);
            }
        }
        Bson::Array(a) => {
            encode_len(a.len(), buf);
            for v in a {
                encode_bson(v, buf);
            }
        }
        Bson::Boolean(b) => buf.push(u8::from(*b)),
        Bson::Null | Bson::Undefined | Bson::MinKey | Bson::MaxKey => {}
        Bson::Int32(i) => buf.extend_from_slice(&i.to_le_bytes()),
        Bson::Int64(i) => buf.extend_from_slice(&i.to_le_bytes()),
        Bson::DateTime(t) => buf.extend_from_slice(&t.timestamp_millis().to_le_bytes()),
        Bson::ObjectId(o) => buf.extend_from_slice(&o.bytes()),
        Bson::Decimal128(d) => buf.extend_from_slice(&d.bytes()),
        other => encode_str(&other.to_string(), buf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn fingerprint_ignores_bookkeeping_and_top_level_order() {
        let a = doc! { "user_id": 1, "total_income": "5", "revision": 3 };
        let b = doc! { "total_income": "5", "user_id": 1, "revision": 4, "updated_at": 9 };
        assert_eq!(fingerprint(&a), fingerprint(&b));
    }

    #[test]
    fn fingerprint_sees_values_types_and_nested_order() {
        let base = doc! { "n": 1_i64, "list": [ { "a": 1, "b": 2 } ] };
        let other_value = doc! { "n": 2_i64, "list": [ { "a": 1, "b": 2 } ] };
        let other_type = doc! { "n": 1_i32, "list": [ { "a": 1, "b": 2 } ] };
        let nested_order = doc! { "n": 1_i64, "list": [ { "b": 2, "a": 1 } ] };
        let fp = fingerprint(&base);
        assert_ne!(fp, fingerprint(&other_value));
        assert_ne!(fp, fingerprint(&other_type));
        assert_ne!(fp, fingerprint(&nested_order));
    }

    #[test]
    fn meta_keeps_the_bookkeeping_a_write_continues_from() {
        let created = bson::DateTime::from_millis(1_000);
        let stored = doc! {
            "user_id": 1, "is_final": true, "revision": 4_i64, "restatements": 1_i64,
            "created_at": created, "finalized_at": created,
        };
        let meta = &StoredMeta::of(Kind::Report, &stored);
        let book = meta.bookkeeping(Kind::Report);
        assert_eq!(book.get_i64("revision").unwrap(), 4);
        assert_eq!(book.get_i64("restatements").unwrap(), 1);
        assert!(book.get_bool("is_final").unwrap());
        assert_eq!(book.get_datetime("created_at").unwrap(), &created);
        assert_eq!(meta.difference(&stored), None);
        let changed = doc! { "user_id": 2, "is_final": true };
        assert_eq!(meta.difference(&changed), Some(Difference::Content));
        let id = ObjectId::new();
        let with_id = &StoredMeta::of(Kind::Report, &doc! { "_id": id, "revision": 0_i64 });
        let book = with_id.bookkeeping(Kind::Report);
        assert_eq!(book.get_object_id("_id").unwrap(), id);
        assert_eq!(book.get_i64("revision").unwrap(), 0, "a revision 0 is kept");
    }

    #[test]
    fn meta_leaves_absent_bookkeeping_absent() {
        let meta = &StoredMeta::of(Kind::Snapshot, &doc! { "user_id": 1 });
        let book = meta.bookkeeping(Kind::Snapshot);
        for field in ["_id", "revision", "created_at", "finalized_at"] {
            assert!(!book.contains_key(field), "{field} in {book:?}");
        }
        assert_eq!(book.get_i64("restatements").unwrap(), 0);
        assert!(!book.get_bool("is_complete").unwrap());
        assert!(!meta.is_final());
        assert_eq!(std::mem::size_of::<StoredMeta>(), 56);
    }
}
