//! The write that brings a stored document to its expected content, with
//! the bookkeeping of `docs/data-contract.md` §5.1: `created_at` is set once;
//! `revision` starts at 1 and grows by one on each change of content;
//! `restatements` grows when the content of an already final document
//! changes; an unchanged document is never written.

use bson::oid::ObjectId;
use bson::{doc, Bson, DateTime as BsonDateTime, Document, RawBson, RawDocumentBuf};
use chrono::{DateTime, NaiveDate, Utc};

use crate::core::calendar::date_label;
use crate::core::diff::diff;
use crate::core::out::{field, DocOut, Out, RawOut};
use crate::core::reports::{Kind, BOOKKEEPING};
use crate::plan::fingerprint::StoredMeta;

/// One write to an output collection.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Insert or replace content. `if_revision: None` inserts a new
    /// document (not written if its key is taken: a conflict); `Some(r)`
    /// replaces the stored document of revision `r` (0: without a
    /// revision), guarded against a concurrent writer.
    Upsert {
        kind: Kind,
        /// The document's key: its `user_id` and the period its date field
        /// names (contract §5.1); [`Write::filter`] finds it by them.
        user: ObjectId,
        period: NaiveDate,
        /// The whole document the write leaves: content, bookkeeping and
        /// key fields, as BSON bytes (what the bulk writer sends).
        set: RawDocumentBuf,
        if_revision: Option<i64>,
        /// What the document holds once written, as the live path keeps it:
        /// its content's fingerprint and its bookkeeping. Set when the
        /// comparison that planned the write computed the fingerprint (the
        /// live path): recording the write then reads nothing back from
        /// `set`, neither by hashing it again nor by walking it.
        leaves: Option<StoredMeta>,
    },
    Delete {
        kind: Kind,
        filter: Document,
    },
}

impl Write {
    pub fn kind(&self) -> Kind {
        match self {
            Write::Upsert { kind, .. } | Write::Delete { kind, .. } => *kind,
        }
    }

    /// The filter that finds the document written: an upsert's key (built
    /// here, on demand: the bulk writer finds almost every document by its
    /// `_id` and a new one needs none, and a `Document` built for each
    /// write cost 3–5% of the live path), a delete's filter.
    pub fn filter(&self) -> Document {
        match self {
            Write::Upsert {
                kind, user, period, ..
            } => key_filter(*kind, *user, *period),
            Write::Delete { filter, .. } => filter.clone(),
        }
    }
}

/// The unique-key filter of a document.
pub fn key_filter(kind: Kind, user: ObjectId, period: NaiveDate) -> Document {
    doc! { "user_id": user, kind.date_field(): date_label(period) }
}

/// What a write continues from, of the stored document it replaces: its
/// bookkeeping (contract §5.1), read from a stored `Document` (scans) or
/// kept in memory (the live path's
/// [`StoredMeta`](crate::plan::fingerprint::StoredMeta)), without
/// building a document for it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prior {
    /// The stored `_id`, if an ObjectId.
    pub id: Option<bson::oid::ObjectId>,
    /// The stored revision, if an integer.
    pub revision: Option<i64>,
    pub restatements: i64,
    /// Whether the stored document is final ([`Kind::final_field`]).
    pub is_final: bool,
    /// Kept as stored, whatever its type: `created_at` is set once.
    pub created_at: Option<Bson>,
    /// The stored `finalized_at`, if a datetime (milliseconds).
    pub finalized_at: Option<i64>,
}

impl Prior {
    /// The bookkeeping of a stored document of `kind`.
    pub fn of(kind: Kind, stored: &Document) -> Prior {
        Prior {
            id: stored.get_object_id("_id").ok(),
            revision: int(stored.get("revision")),
            restatements: int(stored.get("restatements")).unwrap_or(0),
            is_final: stored.get_bool(kind.final_field()).unwrap_or(false),
            created_at: stored.get("created_at").cloned(),
            finalized_at: stored
                .get_datetime("finalized_at")
                .ok()
                .map(|d| d.timestamp_millis()),
        }
    }

    /// The bookkeeping that a write of content, final or not, leaves over
    /// `stored` (contract §5.1): `stored`'s `_id`, or a new one for a new
    /// document; the revision grown by one; `restatements` grown by one
    /// over a final document; `created_at` kept, or now; and for a report
    /// `finalized_at`, kept while it stays final, now when it becomes
    /// final, none while open.
    pub fn after(kind: Kind, now_final: bool, stored: Option<&Prior>, now: BsonDateTime) -> Prior {
        let was_final = stored.is_some_and(|s| s.is_final);
        let finalized_at = match stored.and_then(|s| s.finalized_at) {
            _ if kind != Kind::Report || !now_final => None,
            Some(at) if was_final => Some(at),
            _ => Some(now.timestamp_millis()),
        };
        Prior {
            // ObjectId's default is a new id, ObjectId::new().
            id: stored.map_or_else(|| Some(ObjectId::default()), |s| s.id),
            revision: Some(stored.and_then(|s| s.revision).unwrap_or(0) + 1),
            restatements: stored.map_or(0, |s| s.restatements) + i64::from(was_final),
            is_final: now_final,
            created_at: Some(
                stored
                    .and_then(|s| s.created_at.clone())
                    .unwrap_or(Bson::DateTime(now)),
            ),
            finalized_at,
        }
    }
}

/// Decides the write that brings `stored` to `expected` content, with the
/// bookkeeping rules of contract §5.1; `None` when nothing changes.
pub fn plan_write(
    kind: Kind,
    user: ObjectId,
    period: NaiveDate,
    expected: Option<Document>,
    stored: Option<&Document>,
    now: DateTime<Utc>,
    time_zone: &str,
) -> Option<Write> {
    match (expected, stored) {
        (None, None) => None,
        (None, Some(_)) => Some(Write::Delete {
            kind,
            filter: key_filter(kind, user, period),
        }),
        (Some(content), stored) => {
            if let Some(s) = stored {
                if same_content(&content, s) || diff(&content, s).is_empty() {
                    return None;
                }
            }
            let prior = stored.map(|s| Prior::of(kind, s));
            Some(write_over(
                kind,
                user,
                period,
                content,
                prior.as_ref(),
                now,
                time_zone,
            ))
        }
    }
}

/// The upsert that replaces `stored` (known to differ) by `content`:
/// revision, restatements, created_at and finalized_at follow contract §5.1.
/// `stored` is the bookkeeping of the document replaced.
///
/// Without `stored` the write is an insert of a new document; with it, a
/// replacement guarded by the stored `_id` and revision, so that it never
/// overwrites what another writer stored meanwhile. A stored document
/// without a revision (not written by tally) is guarded as revision 0,
/// which matches a missing one; one whose `_id` is not an ObjectId is
/// found by its key instead.
pub fn write_over<C: Content>(
    kind: Kind,
    user: ObjectId,
    period: NaiveDate,
    content: C,
    stored: Option<&Prior>,
    now: DateTime<Utc>,
    time_zone: &str,
) -> Write {
    upsert_over(kind, user, period, content, stored, now, time_zone).0
}

/// [`write_over`], and the bookkeeping the write leaves ([`Prior::after`]).
pub fn upsert_over<C: Content>(
    kind: Kind,
    user: ObjectId,
    period: NaiveDate,
    content: C,
    stored: Option<&Prior>,
    now: DateTime<Utc>,
    time_zone: &str,
) -> (Write, Prior) {
    let now = BsonDateTime::from_millis(now.timestamp_millis());
    let after = Prior::after(kind, content.is_final(kind), stored, now);
    let bookkeeping = Bookkeeping {
        kind,
        after: &after,
        now,
        time_zone,
    };
    let set = content.into_set(&bookkeeping, kind, user, period);
    let write = Write::Upsert {
        kind,
        user,
        period,
        set,
        if_revision: stored.map(|s| s.revision.unwrap_or(0)),
        leaves: None,
    };
    (write, after)
}

/// The bookkeeping fields a write leaves (`after`, [`Prior::after`]), in
/// their stored order: `_id` (the stored one, or a new one: guarded
/// updates and deletes then find the document by `_id`, which SecantusDB
/// does at half the cost of the (user_id, period) key, BENCHMARKS.md
/// "Writes by _id"), `time_zone`, `revision`, `restatements`,
/// `generated_at`, `updated_at`, `created_at`, and for a report
/// `finalized_at` (null while open).
pub struct Bookkeeping<'a> {
    kind: Kind,
    after: &'a Prior,
    now: BsonDateTime,
    time_zone: &'a str,
}

impl Bookkeeping<'_> {
    /// Writes the fields to `out`, in their stored order.
    fn write<O: Out>(&self, out: &mut O) {
        let (after, now) = (self.after, self.now);
        if let Some(id) = after.id {
            out.oid("_id", id);
        }
        out.string("time_zone", self.time_zone);
        out.int64("revision", after.revision.unwrap_or(1));
        out.int64("restatements", after.restatements);
        out.datetime("generated_at", now);
        out.datetime("updated_at", now);
        match &after.created_at {
            Some(created_at) => out.bson("created_at", created_at),
            None => out.datetime("created_at", now),
        }
        if self.kind == Kind::Report {
            match after.finalized_at {
                Some(at) => out.datetime("finalized_at", BsonDateTime::from_millis(at)),
                None => out.null("finalized_at"),
            }
        }
    }
}

/// Expected content as a write takes it: a `Document` (scans) or its BSON
/// bytes (the live path, built by `crate::core::out::RawOut`).
pub trait Content: Sized {
    /// Whether the content is final ([`Kind::final_field`]).
    fn is_final(&self, kind: Kind) -> bool;
    /// The same content, final.
    fn into_final(self, kind: Kind) -> Self;
    /// The whole document a write leaves, as BSON bytes: this content, then
    /// `bookkeeping`, then any key field ([`key_filter`] of `kind`, `user`
    /// and `period`) the content lacks.
    fn into_set(
        self,
        bookkeeping: &Bookkeeping,
        kind: Kind,
        user: ObjectId,
        period: NaiveDate,
    ) -> RawDocumentBuf;
}

impl Content for Document {
    fn is_final(&self, kind: Kind) -> bool {
        self.get_bool(kind.final_field()).unwrap_or(false)
    }

    fn into_final(mut self, kind: Kind) -> Document {
        self.insert(kind.final_field(), true);
        self
    }

    fn into_set(
        mut self,
        bookkeeping: &Bookkeeping,
        kind: Kind,
        user: ObjectId,
        period: NaiveDate,
    ) -> RawDocumentBuf {
        let mut fields = DocOut::new();
        bookkeeping.write(&mut fields);
        for (k, v) in fields.finish() {
            self.insert(k, v);
        }
        for (k, v) in key_filter(kind, user, period) {
            if !self.contains_key(&k) {
                self.insert(k, v);
            }
        }
        RawDocumentBuf::from_document(&self).expect("a document tally built encodes")
    }
}

impl Content for RawDocumentBuf {
    /// The builders write the flag last (`UserView::*_as`): read from the
    /// document's end when it is there, as a boolean element of the flag's
    /// name before the closing NUL. Walking the fields to it cost 3.3% of
    /// the live replay (compared, then written).
    fn is_final(&self, kind: Kind) -> bool {
        let (bytes, key) = (self.as_bytes(), kind.final_field().as_bytes());
        let last = bytes
            .len()
            .checked_sub(key.len() + 4)
            .map(|at| &bytes[at..]);
        let walk = || field(bytes, kind.final_field()) == Some((0x08, &[1][..]));
        let found = match last {
            Some([0x08, rest @ .., 0, flag @ (0 | 1), 0]) if rest == key => *flag == 1,
            _ => walk(),
        };
        debug_assert_eq!(found, walk());
        found
    }

    /// Through a `Document`: the live path builds reports final where they
    /// must be (`UserView::build_range_as`), so this is not its hot path.
    fn into_final(self, kind: Kind) -> RawDocumentBuf {
        let doc = self.to_document().expect("content tally built");
        RawDocumentBuf::from_document(&doc.into_final(kind)).expect("content tally built")
    }

    /// Appended: the builders write no bookkeeping field, and every key
    /// field.
    fn into_set(
        self,
        bookkeeping: &Bookkeeping,
        kind: Kind,
        user: ObjectId,
        period: NaiveDate,
    ) -> RawDocumentBuf {
        debug_assert!(
            (BOOKKEEPING.iter()).all(|k| matches!(self.get(k), Ok(None))),
            "bookkeeping in the content"
        );
        let mut out = RawOut::reopen(self);
        bookkeeping.write(&mut out);
        let set = out.finish();
        debug_assert!(
            (key_filter(kind, user, period).iter()).all(|(k, v)| set
                .get(k)
                .ok()
                .flatten()
                .map(|r| r.to_raw_bson())
                == RawBson::try_from(v.clone()).ok()),
            "content without its key fields"
        );
        set
    }
}

/// Whether `stored` holds exactly the content `expected` (bookkeeping
/// fields aside), value for value and byte for byte. Documents tally wrote
/// from unchanged data compare equal here, which is much cheaper than the
/// numeric field-by-field [`diff`]; when this says no, only the diff can
/// tell (2.50 equals 2.5 there), so callers fall back to it.
pub fn same_content(expected: &Document, stored: &Document) -> bool {
    let content = |k: &str| !BOOKKEEPING.contains(&k);
    let mut n = 0;
    for (k, v) in expected {
        if content(k) {
            if stored.get(k) != Some(v) {
                return false;
            }
            n += 1;
        }
    }
    stored.keys().filter(|k| content(k)).count() == n
}

pub(crate) fn int(v: Option<&Bson>) -> Option<i64> {
    match v {
        Some(Bson::Int64(i)) => Some(*i),
        Some(Bson::Int32(i)) => Some(i64::from(*i)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_final_flag_reads_alike_last_or_anywhere() {
        let raw = |d: Document| RawDocumentBuf::from_document(&d).unwrap();
        let cases = [
            (doc! { "a": 1, "is_final": true }, true),
            (doc! { "a": 1, "is_final": false }, false),
            (doc! { "is_final": true, "a": 1 }, true),
            (doc! { "is_final": true, "a": false }, true),
            (doc! { "a": 1 }, false),
            (doc! { "a": 1, "is_final": 1 }, false),
            (doc! { "a": { "is_final": true } }, false),
            (doc! { "a": [ { "is_final": true } ] }, false),
            (doc! { "xis_final": true }, false),
            (doc! { "is_complete": true }, false),
            (doc! {}, false),
        ];
        for (d, expected) in cases {
            assert_eq!(raw(d.clone()).is_final(Kind::Report), expected, "{d}");
        }
        let summary = raw(doc! { "month": 1, "is_complete": true });
        assert!(summary.is_final(Kind::Monthly));
        assert!(!summary.is_final(Kind::Report));
    }

    #[test]
    fn bookkeeping_follows_revision_and_restatement_rules() {
        let user = ObjectId::new();
        let day: NaiveDate = "2026-01-05".parse().unwrap();
        let content = doc! { "user_id": user, "report_date": date_label(day), "total_income": 5, "is_final": true };
        let t1 = now("2026-02-01T00:00:00Z");
        let Some(Write::Upsert {
            set: first,
            if_revision: None,
            ..
        }) = plan_write(
            Kind::Report,
            user,
            day,
            Some(content.clone()),
            None,
            t1,
            "UTC",
        )
        else {
            panic!("a new document is an unguarded upsert");
        };
        let first = first.to_document().unwrap();
        assert_eq!(first.get_i64("revision").unwrap(), 1);
        assert_eq!(first.get_i64("restatements").unwrap(), 0);
        assert!(first.get_datetime("finalized_at").is_ok());
        // Same content again: nothing to write.
        assert_eq!(
            plan_write(
                Kind::Report,
                user,
                day,
                Some(content.clone()),
                Some(&first),
                t1,
                "UTC"
            ),
            None
        );
        // Changed content of a final document: revision + 1, restatement + 1, created_at kept.
        let mut changed = content.clone();
        changed.insert("total_income", 6);
        let t2 = now("2026-02-02T00:00:00Z");
        let Some(Write::Upsert {
            set: second,
            if_revision: Some(1),
            ..
        }) = plan_write(
            Kind::Report,
            user,
            day,
            Some(changed),
            Some(&first),
            t2,
            "UTC",
        )
        else {
            panic!("a changed document is a guarded update");
        };
        let second = second.to_document().unwrap();
        assert_eq!(second.get_i64("revision").unwrap(), 2);
        assert_eq!(second.get_i64("restatements").unwrap(), 1);
        assert_eq!(second.get("created_at"), first.get("created_at"));
        assert_eq!(second.get("finalized_at"), first.get("finalized_at"));
        // Gone from the source: deleted.
        assert!(matches!(
            plan_write(Kind::Report, user, day, None, Some(&second), t2, "UTC"),
            Some(Write::Delete { .. })
        ));
    }
}
