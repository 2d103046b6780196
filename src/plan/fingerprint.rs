//! What tally keeps of a stored document instead of the document: a
//! fingerprint of its content and the bookkeeping its next write
//! continues from.

use std::hash::{BuildHasher, Hasher};
use std::sync::LazyLock;

use bson::oid::ObjectId;
use bson::{Bson, Document, RawDocument, RawDocumentBuf};
use chrono::{Datelike, NaiveDate};

use crate::core::out::elements;
use crate::core::reports::{Kind, BOOKKEEPING};
use crate::core::vecmap::{Keyed, Sorted};
use crate::plan::compare::{Difference, StoredDoc};
use crate::plan::write::Prior;

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
        StoredMeta::with_fingerprint(kind, doc, fingerprint(doc))
    }

    /// [`StoredMeta::of`] for a document whose [`fingerprint`] is known.
    pub fn with_fingerprint(kind: Kind, doc: &Document, fingerprint: u64) -> StoredMeta {
        debug_assert_eq!(fingerprint, self::fingerprint(doc), "a stale fingerprint");
        StoredMeta::of_prior(fingerprint, &Prior::of(kind, doc))
    }

    /// The meta of what a write leaves (`Write::Upsert`'s `set`), whose
    /// content's [`fingerprint_raw`] is `fingerprint`.
    pub fn of_written(kind: Kind, set: &RawDocument, fingerprint: u64) -> StoredMeta {
        debug_assert_eq!(fingerprint, fingerprint_raw(set), "a stale fingerprint");
        let (mut id, mut is_final, mut revision, mut restatements) = (None, false, None, None);
        let (mut created_at, mut finalized_at) = (None, None);
        let int = |t: u8, v: &[u8]| match t {
            0x12 => v.try_into().ok().map(i64::from_le_bytes),
            0x10 => v.try_into().ok().map(i32::from_le_bytes).map(i64::from),
            _ => None,
        };
        let millis = |t: u8, v: &[u8]| match t {
            0x09 => v.try_into().ok().map(i64::from_le_bytes),
            _ => None,
        };
        // One pass over the elements: a field read by name is a pass each.
        for (key, element) in elements(set.as_bytes()).map_while(|e| e) {
            let (t, v) = (element[0], &element[1 + key.len() + 1..]);
            match key {
                b"_id" if t == 0x07 => id = v.try_into().ok().map(ObjectId::from_bytes),
                b"revision" => revision = int(t, v),
                b"restatements" => restatements = int(t, v),
                b"created_at" => created_at = millis(t, v),
                b"finalized_at" => finalized_at = millis(t, v),
                k if k == kind.final_field().as_bytes() => is_final = t == 0x08 && v == [1],
                _ => {}
            }
        }
        StoredMeta::from_fields(
            fingerprint,
            id,
            is_final,
            revision,
            restatements,
            created_at,
            finalized_at,
        )
    }

    /// The meta of a document whose content's [`fingerprint_raw`] is
    /// `fingerprint` and whose bookkeeping is `prior`: what
    /// [`StoredMeta::of_written`] reads from the document a write leaves
    /// ([`Prior::after`]), without reading it.
    pub fn of_prior(fingerprint: u64, prior: &Prior) -> StoredMeta {
        let created_at = match prior.created_at {
            Some(Bson::DateTime(at)) => Some(at.timestamp_millis()),
            _ => None,
        };
        StoredMeta::from_fields(
            fingerprint,
            prior.id,
            prior.is_final,
            prior.revision,
            Some(prior.restatements),
            created_at,
            prior.finalized_at,
        )
    }

    fn from_fields(
        fingerprint: u64,
        id: Option<ObjectId>,
        is_final: bool,
        revision: Option<i64>,
        restatements: Option<i64>,
        created_at: Option<i64>,
        finalized_at: Option<i64>,
    ) -> StoredMeta {
        let mut flags = 0;
        if id.is_some() {
            flags |= HAS_ID;
        }
        if is_final {
            flags |= IS_FINAL;
        }
        StoredMeta {
            fingerprint,
            // A stored revision of i64::MIN reads as none: never written so.
            revision: revision.unwrap_or(ABSENT),
            restatements: restatements.unwrap_or(0),
            created_at: created_at.unwrap_or(ABSENT),
            finalized_at: finalized_at.unwrap_or(ABSENT),
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

/// The metas of one user's stored documents by (kind, period), as the live
/// window holds them: 48 bytes a document with its key, where a
/// [`StoredMeta`] and its key take 64 (BENCHMARKS.md, issue 13 (4)). The
/// key is packed into 32 bits, revision and restatements into 32 bits
/// each, times into 48 (±4,400 years around 1970). A document whose
/// bookkeeping does not fit (written by something other than tally) keeps
/// it whole in a list beside, so nothing is lost or clamped.
#[derive(Clone, Debug, Default)]
pub struct Metas {
    packed: Sorted<Packed>,
    /// Bookkeeping of the packed entries flagged [`WIDE`], by key.
    wide: Vec<Wide>,
}

/// One [`StoredMeta`] with its key, packed (4-byte aligned: no padding).
#[derive(Clone, Debug)]
struct Packed {
    key: u32,
    revision: i32,
    restatements: i32,
    fingerprint: [u32; 2],
    created_at: [u8; 6],
    finalized_at: [u8; 6],
    id: [u8; 12],
    flags: u8,
}

impl Keyed for Packed {
    type Key = u32;
    fn key(&self) -> &u32 {
        &self.key
    }
}

/// The bookkeeping of a document that does not pack.
#[derive(Clone, Debug)]
struct Wide {
    key: u32,
    revision: i64,
    restatements: i64,
    created_at: i64,
    finalized_at: i64,
}

/// `flags`: the bookkeeping is in [`Metas::wide`].
const WIDE: u8 = 4;
/// An absent time in 48 bits.
const ABSENT_48: i64 = -(1 << 47);
/// Added to a day's number so that every `NaiveDate` (±262,143 years,
/// under 2^27 days from 0001-01-01) packs as a positive 30-bit number.
const DAY_BIAS: i32 = 1 << 28;

/// (kind, period) as 32 bits in the same order: the kind's index in
/// [`Kind::ALL`] (its declaration order), then the day.
fn pack_key(kind: Kind, period: NaiveDate) -> u32 {
    let k = Kind::ALL
        .iter()
        .position(|&k| k == kind)
        .expect("one of ALL") as u32;
    (k << 30) | (period.num_days_from_ce() + DAY_BIAS) as u32
}

fn unpack_key(key: u32) -> (Kind, NaiveDate) {
    let day = (key & ((1 << 30) - 1)) as i32 - DAY_BIAS;
    let period = NaiveDate::from_num_days_from_ce_opt(day).expect("packed from a date");
    (Kind::ALL[(key >> 30) as usize], period)
}

/// A time (milliseconds, or [`ABSENT`]) in 48 bits, if it fits.
fn pack_time(t: i64) -> Option<[u8; 6]> {
    let v = match t {
        ABSENT => ABSENT_48,
        t if t > ABSENT_48 && t < -ABSENT_48 => t,
        _ => return None,
    };
    Some(v.to_le_bytes()[..6].try_into().expect("6 bytes"))
}

fn unpack_time(b: [u8; 6]) -> i64 {
    let mut x = [0; 8];
    x[..6].copy_from_slice(&b);
    // Sign-extended from 48 bits.
    match i64::from_le_bytes(x) << 16 >> 16 {
        ABSENT_48 => ABSENT,
        t => t,
    }
}

/// A revision (or [`ABSENT`]) in 32 bits, if it fits.
fn pack_revision(r: i64) -> Option<i32> {
    match r {
        ABSENT => Some(i32::MIN),
        r => i32::try_from(r).ok().filter(|&r| r != i32::MIN),
    }
}

fn unpack_revision(r: i32) -> i64 {
    match r {
        i32::MIN => ABSENT,
        r => i64::from(r),
    }
}

impl Metas {
    /// Of metas in any order; of two with one key the later wins.
    pub fn from_unsorted(mut metas: Vec<((Kind, NaiveDate), StoredMeta)>) -> Metas {
        metas.reverse();
        metas.sort_by_key(|(key, _)| *key);
        metas.dedup_by_key(|(key, _)| *key);
        let mut out = Metas::default();
        let packed = metas
            .iter()
            .map(|((kind, period), meta)| out.pack(pack_key(*kind, *period), meta))
            .collect();
        // `pack_key` keeps the order of (kind, period): still sorted, unique.
        out.packed = Sorted::from_sorted(packed);
        out
    }

    /// `meta` packed under `key`; its bookkeeping goes to `wide` if it
    /// does not fit (the caller has removed any earlier entry of `key`).
    fn pack(&mut self, key: u32, meta: &StoredMeta) -> Packed {
        let fp = meta.fingerprint;
        let mut p = Packed {
            key,
            revision: 0,
            restatements: 0,
            fingerprint: [fp as u32, (fp >> 32) as u32],
            created_at: [0; 6],
            finalized_at: [0; 6],
            id: meta.id,
            flags: meta.flags,
        };
        let book = (
            pack_revision(meta.revision),
            i32::try_from(meta.restatements).ok(),
            pack_time(meta.created_at),
            pack_time(meta.finalized_at),
        );
        if let (Some(r), Some(s), Some(c), Some(f)) = book {
            (p.revision, p.restatements, p.created_at, p.finalized_at) = (r, s, c, f);
        } else {
            p.flags |= WIDE;
            self.wide.push(Wide {
                key,
                revision: meta.revision,
                restatements: meta.restatements,
                created_at: meta.created_at,
                finalized_at: meta.finalized_at,
            });
        }
        p
    }

    fn unpack(&self, p: &Packed) -> StoredMeta {
        let mut meta = StoredMeta {
            fingerprint: u64::from(p.fingerprint[0]) | (u64::from(p.fingerprint[1]) << 32),
            revision: unpack_revision(p.revision),
            restatements: i64::from(p.restatements),
            created_at: unpack_time(p.created_at),
            finalized_at: unpack_time(p.finalized_at),
            id: p.id,
            flags: p.flags & !WIDE,
        };
        if p.flags & WIDE != 0 {
            let w = self
                .wide
                .iter()
                .find(|w| w.key == p.key)
                .expect("kept beside");
            meta.revision = w.revision;
            meta.restatements = w.restatements;
            meta.created_at = w.created_at;
            meta.finalized_at = w.finalized_at;
        }
        meta
    }

    pub fn get(&self, kind: Kind, period: NaiveDate) -> Option<StoredMeta> {
        self.packed
            .get(&pack_key(kind, period))
            .map(|p| self.unpack(p))
    }

    /// Sets the meta of (kind, period).
    pub fn insert(&mut self, kind: Kind, period: NaiveDate, meta: &StoredMeta) {
        let key = pack_key(kind, period);
        self.wide.retain(|w| w.key != key);
        let p = self.pack(key, meta);
        self.packed.insert(p);
    }

    pub fn remove(&mut self, kind: Kind, period: NaiveDate) {
        let key = pack_key(kind, period);
        self.packed.remove(&key);
        self.wide.retain(|w| w.key != key);
    }

    /// Reads every key in order: independent loads the CPU overlaps and
    /// its prefetcher streams, where a binary search over metas not in
    /// cache waits for each line it probes in turn.
    pub fn warm(&self) {
        let keys = self.packed.as_slice().iter().map(|p| p.key);
        std::hint::black_box(keys.fold(0, |a, k| a ^ k));
    }

    /// The metas of `kind` over `[lo, hi]`, in period order.
    pub fn range(
        &self,
        kind: Kind,
        lo: NaiveDate,
        hi: NaiveDate,
    ) -> impl Iterator<Item = ((Kind, NaiveDate), StoredMeta)> + '_ {
        let (lo, hi) = (pack_key(kind, lo), pack_key(kind, hi));
        let found = self.packed.range(&lo, &hi).iter();
        found.map(|p| (unpack_key(p.key), self.unpack(p)))
    }

    /// Keeps the metas whose (kind, period) `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(Kind, NaiveDate) -> bool) {
        self.packed.retain(|p| {
            let (kind, period) = unpack_key(p.key);
            keep(kind, period)
        });
        let packed = &self.packed;
        self.wide.retain(|w| packed.get(&w.key).is_some());
    }

    pub fn len(&self) -> usize {
        self.packed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }
}

/// A sentinel-coded value back as an option.
fn present(v: i64) -> Option<i64> {
    (v != ABSENT).then_some(v)
}

impl StoredDoc<RawDocumentBuf> for StoredMeta {
    fn summary(content: &RawDocumentBuf) -> Option<u64> {
        Some(fingerprint_raw(content))
    }

    fn difference(&self, content: &RawDocumentBuf, summary: Option<u64>) -> Option<Difference> {
        let fingerprint = summary.unwrap_or_else(|| fingerprint_raw(content));
        (fingerprint != self.fingerprint).then_some(Difference::Content)
    }

    fn prior(&self, _: Kind) -> Prior {
        Prior {
            id: self.id(),
            revision: present(self.revision),
            restatements: self.restatements,
            is_final: self.is_final(),
            created_at: present(self.created_at)
                .map(|c| Bson::DateTime(bson::DateTime::from_millis(c))),
            finalized_at: present(self.finalized_at),
        }
    }
}

/// A hash of a document's content fields (bookkeeping aside), independent
/// of their order at the top level; values compare exactly (type and
/// bits, nested order included).
///
/// Defined on the document's BSON bytes ([`fingerprint_raw`]): the live
/// path builds its documents as bytes, and a stored document read as a
/// [`Document`] is encoded first. Fingerprints live in memory only, so the
/// definition may change between versions, and the hash is seeded at
/// random for each process.
pub fn fingerprint(doc: &Document) -> u64 {
    match RawDocumentBuf::from_document(doc) {
        Ok(raw) => fingerprint_raw(&raw),
        // Not encodable (a key with a NUL): a fingerprint nothing tally
        // builds has, so the document is rewritten.
        Err(_) => hash(format!("{doc:?}").as_bytes()),
    }
}

/// [`fingerprint`] of a document's BSON bytes: the sum (wrapping) of the
/// hashes of its top-level content elements, each hashed whole (type, key
/// and value bytes), so that their order does not count and a field's key
/// stays tied to its value. Summed instead of sorted by key and hashed in
/// one run: the sort was half the cost (BENCHMARKS.md (3), eleventh
/// update).
pub fn fingerprint_raw(doc: &RawDocument) -> u64 {
    let bytes = doc.as_bytes();
    let mut sum = 0u64;
    for element in elements(bytes) {
        match element {
            Some((key, element)) => {
                if !BOOKKEEPING.iter().any(|b| b.as_bytes() == key) {
                    sum = sum.wrapping_add(hash(element));
                }
            }
            // Malformed after this point (not from bson's encoder): the
            // whole document stands for its content.
            None => return hash(bytes),
        }
    }
    sum
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = hasher();
    h.write(bytes);
    h.finish()
}

/// The hasher of fingerprints: foldhash's quality hasher, with one random
/// seed for the process (a user cannot craft a note whose report collides
/// with another). SipHash (std's `DefaultHasher`), with the elements
/// copied into one buffer first, cost 4–5 times more (BENCHMARKS.md (3),
/// eleventh update).
fn hasher() -> foldhash::quality::FoldHasher<'static> {
    static STATE: LazyLock<foldhash::quality::RandomState> = LazyLock::new(Default::default);
    STATE.build_hasher()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn meta(revision: i64, restatements: i64, created_at: i64, finalized_at: i64) -> StoredMeta {
        StoredMeta {
            fingerprint: 0xDEAD_BEEF_0123_4567 ^ revision as u64,
            revision,
            restatements,
            created_at,
            finalized_at,
            id: ObjectId::new().bytes(),
            flags: HAS_ID | IS_FINAL,
        }
    }

    #[test]
    fn packed_metas_read_back_exactly_even_when_they_do_not_pack() {
        let day = |s: &str| s.parse::<NaiveDate>().unwrap();
        let now = 1_790_000_000_123;
        let cases = [
            // Tally's own: they pack.
            (Kind::Report, day("2026-11-30"), meta(3, 1, now, now + 5)),
            (
                Kind::Snapshot,
                day("2026-11-30"),
                meta(ABSENT, 0, ABSENT, ABSENT),
            ),
            (
                Kind::Monthly,
                day("2026-11-01"),
                meta(i64::from(i32::MAX), -4, -now, ABSENT),
            ),
            // Foreign bookkeeping that does not: kept beside, whole.
            (
                Kind::Report,
                day("2026-12-01"),
                meta(1 << 40, 0, now, ABSENT),
            ),
            (
                Kind::Report,
                day("2026-12-02"),
                meta(i64::from(i32::MIN), 0, now, ABSENT),
            ),
            (
                Kind::Report,
                day("2026-12-03"),
                meta(2, i64::MAX, now, ABSENT),
            ),
            (
                Kind::Report,
                day("2026-12-04"),
                meta(2, 0, ABSENT_48, ABSENT),
            ),
            (Kind::Snapshot, NaiveDate::MIN, meta(2, 0, now, i64::MAX)),
            (
                Kind::Monthly,
                NaiveDate::MAX,
                meta(2, 0, i64::MIN + 1, ABSENT),
            ),
        ];
        let metas = Metas::from_unsorted(
            cases
                .iter()
                .map(|(k, p, m)| ((*k, *p), m.clone()))
                .collect(),
        );
        assert_eq!((metas.len(), metas.wide.len()), (cases.len(), 6));
        for (kind, period, m) in &cases {
            assert_eq!(
                metas.get(*kind, *period).as_ref(),
                Some(m),
                "{kind:?} {period}"
            );
        }
        // In (kind, period) order, whatever the dates.
        let all: Vec<(Kind, NaiveDate)> = Kind::ALL
            .iter()
            .flat_map(|&k| {
                metas
                    .range(k, NaiveDate::MIN, NaiveDate::MAX)
                    .map(|(key, _)| key)
            })
            .collect();
        let mut sorted: Vec<(Kind, NaiveDate)> = cases.iter().map(|(k, p, _)| (*k, *p)).collect();
        sorted.sort();
        assert_eq!(all, sorted);
        assert_eq!(std::mem::size_of::<Packed>(), 48);
    }

    #[test]
    fn a_meta_replaced_or_removed_leaves_nothing_beside() {
        let day = |s: &str| s.parse::<NaiveDate>().unwrap();
        let (a, b) = (day("2026-11-01"), day("2026-11-02"));
        let mut metas = Metas::from_unsorted(vec![
            ((Kind::Report, a), meta(1 << 40, 0, 5, ABSENT)),
            ((Kind::Report, a), meta(7, 0, 5, ABSENT)),
            ((Kind::Report, b), meta(1 << 41, 0, 5, ABSENT)),
        ]);
        // Of two with one key the later wins; only b's does not pack.
        assert_eq!(metas.get(Kind::Report, a).unwrap().revision, 7);
        assert_eq!(metas.wide.len(), 1);
        metas.insert(Kind::Report, b, &meta(8, 0, 5, ABSENT));
        assert_eq!(
            (
                metas.get(Kind::Report, b).unwrap().revision,
                metas.wide.len()
            ),
            (8, 0)
        );
        let wide = meta(1 << 42, 0, 5, ABSENT);
        metas.insert(Kind::Report, a, &wide);
        assert_eq!(metas.get(Kind::Report, a), Some(wide));
        metas.retain(|_, period| period != a);
        assert_eq!((metas.len(), metas.wide.len()), (1, 0));
        metas.insert(Kind::Report, b, &meta(1 << 43, 0, 5, ABSENT));
        metas.remove(Kind::Report, b);
        assert!(metas.is_empty() && metas.wide.is_empty());
        assert_eq!(metas.get(Kind::Report, b), None);
    }

    #[test]
    fn bookkeeping_appended_to_the_bytes_leaves_the_fingerprint() {
        let content = doc! {
            "user_id": ObjectId::new(), "n": 1.5, "s": "Café",
            "list": [ { "a": 1, "b": [true, null, { "c": bson::Decimal128::from_bytes([1; 16]) }] }, [] ],
            "empty": {}, "at": bson::DateTime::from_millis(5), "big": 1_i64 << 40,
            "code": bson::Bson::JavaScriptCode("x".into()),
        };
        let mut raw = RawDocumentBuf::from_document(&content).unwrap();
        let fp = fingerprint_raw(&raw);
        assert_eq!(fp, fingerprint(&content));
        raw.append("revision", 3_i64);
        raw.append("_id", ObjectId::new());
        raw.append("updated_at", bson::DateTime::from_millis(9));
        assert_eq!(fingerprint_raw(&raw), fp);
        let mut other = content.clone();
        other.get_array_mut("list").unwrap()[0]
            .as_document_mut()
            .unwrap()
            .insert("a", 2);
        assert_ne!(fingerprint(&other), fp);
        // An element bson cannot read: hashed whole, without a panic.
        let mut broken = raw.as_bytes().to_vec();
        broken[4] = 0x42; // no such element type
        let broken = bson::RawDocument::from_bytes(&broken).unwrap();
        assert_ne!(fingerprint_raw(broken), fp);
    }

    /// What the live path records of a write without reading it
    /// ([`StoredMeta::of_prior`] of [`Prior::after`]) is what reading the
    /// written document gives, over every shape of stored bookkeeping.
    #[test]
    fn the_meta_a_write_leaves_is_the_one_read_from_its_bytes() {
        use crate::plan::write::upsert_over;
        let (user, day) = (ObjectId::new(), "2026-11-30".parse::<NaiveDate>().unwrap());
        let now = chrono::DateTime::from_timestamp_millis(1_790_000_000_123).unwrap();
        let at = |ms: i64| Some(Bson::DateTime(bson::DateTime::from_millis(ms)));
        let stored = |id, revision, restatements, is_final, created_at, finalized_at| Prior {
            id,
            revision,
            restatements,
            is_final,
            created_at,
            finalized_at,
        };
        let priors = [
            None,
            Some(stored(
                Some(ObjectId::new()),
                Some(4),
                0,
                false,
                at(7),
                None,
            )),
            Some(stored(
                Some(ObjectId::new()),
                Some(4),
                2,
                true,
                at(7),
                Some(9),
            )),
            Some(stored(Some(ObjectId::new()), Some(1), 0, true, at(7), None)),
            // Not written by tally: an id that is not an ObjectId, no
            // revision, a created_at that is not a date.
            Some(stored(
                None,
                None,
                0,
                false,
                Some(Bson::String("x".into())),
                None,
            )),
            Some(stored(None, None, 0, true, None, Some(3))),
        ];
        let mut seen = 0;
        for kind in Kind::ALL {
            for prior in &priors {
                for now_final in [false, true] {
                    let mut content = doc! { "user_id": user, "n": 1.5 };
                    content.insert(kind.date_field(), crate::core::calendar::date_label(day));
                    content.insert(kind.final_field(), now_final);
                    let raw = RawDocumentBuf::from_document(&content).unwrap();
                    let f = fingerprint_raw(&raw);
                    let (write, after) =
                        upsert_over(kind, user, day, raw, prior.as_ref(), now, "UTC");
                    let crate::plan::write::Write::Upsert { set, .. } = &write else {
                        panic!("an upsert");
                    };
                    let read = StoredMeta::of_written(kind, set, f);
                    assert_eq!(StoredMeta::of_prior(f, &after), read, "{kind:?} {prior:?}");
                    seen += usize::from(read.is_final());
                }
            }
        }
        assert_eq!(seen, Kind::ALL.len() * priors.len());
    }

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
        // Summed over fields: a key stays tied to its value.
        let swapped = |a: i64, b: i64| fingerprint(&doc! { "a": a, "b": b, "c": 3_i64 });
        assert_ne!(swapped(1, 2), swapped(2, 1));
        assert_eq!(
            swapped(1, 2),
            fingerprint(&doc! { "c": 3_i64, "b": 2_i64, "a": 1_i64 })
        );
    }

    #[test]
    fn meta_keeps_the_bookkeeping_a_write_continues_from() {
        let created = bson::DateTime::from_millis(1_000);
        let stored = doc! {
            "user_id": 1, "is_final": true, "revision": 4_i64, "restatements": 1_i64,
            "created_at": created, "finalized_at": created,
        };
        let meta = &StoredMeta::of(Kind::Report, &stored);
        let prior = meta.prior(Kind::Report);
        assert_eq!(
            prior,
            Prior::of(Kind::Report, &stored),
            "as read from the document"
        );
        assert_eq!(prior.revision, Some(4));
        assert_eq!(prior.restatements, 1);
        assert!(prior.is_final);
        assert_eq!(prior.created_at, Some(Bson::DateTime(created)));
        assert_eq!(prior.finalized_at, Some(1_000));
        let raw = |d: &Document| RawDocumentBuf::from_document(d).unwrap();
        assert_eq!(meta.difference(&raw(&stored), None), None);
        let changed = doc! { "user_id": 2, "is_final": true };
        assert_eq!(
            meta.difference(&raw(&changed), None),
            Some(Difference::Content)
        );
        let id = ObjectId::new();
        let with_id = doc! { "_id": id, "revision": 0_i64 };
        let prior = StoredMeta::of(Kind::Report, &with_id).prior(Kind::Report);
        assert_eq!(prior, Prior::of(Kind::Report, &with_id));
        assert_eq!(prior.id, Some(id));
        assert_eq!(prior.revision, Some(0), "a revision 0 is kept");
    }

    #[test]
    fn meta_leaves_absent_bookkeeping_absent() {
        let stored = doc! { "user_id": 1 };
        let meta = &StoredMeta::of(Kind::Snapshot, &stored);
        let prior = meta.prior(Kind::Snapshot);
        assert_eq!(prior, Prior::default());
        assert_eq!(prior, Prior::of(Kind::Snapshot, &stored));
        assert!(!meta.is_final());
        assert_eq!(std::mem::size_of::<StoredMeta>(), 56);
    }
}
