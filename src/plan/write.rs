//! The write that brings a stored document to its expected content, with
//! the bookkeeping of `docs/data-contract.md` §5.1: `created_at` is set once;
//! `revision` starts at 1 and grows by one on each change of content;
//! `restatements` grows when the content of an already final document
//! changes; an unchanged document is never written.

use bson::{doc, Bson, DateTime as BsonDateTime, Document};
use chrono::{DateTime, NaiveDate, Utc};

use crate::core::calendar::date_label;
use crate::core::diff::diff;
use crate::core::reports::{Kind, BOOKKEEPING};

/// One write to an output collection.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Insert or replace content. `if_revision: None` inserts a new
    /// document (not written if its key is taken: a conflict); `Some(r)`
    /// replaces the stored document of revision `r` (0: without a
    /// revision), guarded against a concurrent writer.
    Upsert {
        kind: Kind,
        filter: Document,
        set: Document,
        if_revision: Option<i64>,
        /// The [fingerprint](crate::plan::fingerprint::fingerprint) of
        /// `set`'s content, when the comparison that planned the write
        /// computed it (the live path): recording the write then does not
        /// hash the document a second time.
        content_fingerprint: Option<u64>,
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
}

/// The unique-key filter of a document.
pub fn key_filter(kind: Kind, user: bson::oid::ObjectId, period: NaiveDate) -> Document {
    doc! { "user_id": user, kind.date_field(): date_label(period) }
}

/// Decides the write that brings `stored` to `expected` content, with the
/// bookkeeping rules of contract §5.1; `None` when nothing changes.
pub fn plan_write(
    kind: Kind,
    filter: Document,
    expected: Option<Document>,
    stored: Option<&Document>,
    now: DateTime<Utc>,
    time_zone: &str,
) -> Option<Write> {
    match (expected, stored) {
        (None, None) => None,
        (None, Some(_)) => Some(Write::Delete { kind, filter }),
        (Some(content), stored) => {
            if let Some(s) = stored {
                if same_content(&content, s) || diff(&content, s).is_empty() {
                    return None;
                }
            }
            Some(write_over(kind, filter, content, stored, now, time_zone))
        }
    }
}

/// The upsert that replaces `stored` (known to differ) by `content`:
/// revision, restatements, created_at and finalized_at follow contract §5.1.
/// Only the bookkeeping fields of `stored` are read.
///
/// Without `stored` the write is an insert of a new document; with it, a
/// replacement guarded by the stored `_id` and revision, so that it never
/// overwrites what another writer stored meanwhile. A stored document
/// without a revision (not written by tally) is guarded as revision 0,
/// which matches a missing one; one whose `_id` is not an ObjectId is
/// found by its key instead.
pub fn write_over(
    kind: Kind,
    filter: Document,
    content: Document,
    stored: Option<&Document>,
    now: DateTime<Utc>,
    time_zone: &str,
) -> Write {
    let now = BsonDateTime::from_millis(now.timestamp_millis());
    let now_final = content.get_bool(kind.final_field()).unwrap_or(false);
    let was_final = stored.is_some_and(|s| s.get_bool(kind.final_field()).unwrap_or(false));
    let revision = stored.and_then(|s| int(s.get("revision")));
    let restatements = stored.and_then(|s| int(s.get("restatements"))).unwrap_or(0);
    let mut set = content;
    // The stored document's `_id`, or a new one: guarded updates and
    // deletes then find the document by `_id`, which SecantusDB does at half
    // the cost of the (user_id, period) key (BENCHMARKS.md, "Writes by _id").
    match stored {
        // ObjectId's default is a new id, ObjectId::new().
        None => {
            set.insert("_id", bson::oid::ObjectId::default());
        }
        Some(s) => {
            if let Ok(id) = s.get_object_id("_id") {
                set.insert("_id", id);
            }
        }
    }
    set.insert("time_zone", time_zone);
    set.insert("revision", revision.unwrap_or(0) + 1);
    set.insert("restatements", restatements + i64::from(was_final));
    set.insert("generated_at", now);
    set.insert("updated_at", now);
    set.insert(
        "created_at",
        stored
            .and_then(|s| s.get("created_at").cloned())
            .unwrap_or(Bson::DateTime(now)),
    );
    if kind == Kind::Report {
        let finalized_at = match stored.and_then(|s| s.get("finalized_at")) {
            Some(at @ Bson::DateTime(_)) if now_final && was_final => at.clone(),
            _ if now_final => Bson::DateTime(now),
            _ => Bson::Null,
        };
        set.insert("finalized_at", finalized_at);
    }
    Write::Upsert {
        kind,
        filter,
        set,
        if_revision: stored.map(|_| revision.unwrap_or(0)),
        content_fingerprint: None,
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
    use bson::oid::ObjectId;

    fn now(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn bookkeeping_follows_revision_and_restatement_rules() {
        let user = ObjectId::new();
        let day: NaiveDate = "2026-01-05".parse().unwrap();
        let filter = key_filter(Kind::Report, user, day);
        let content = doc! { "user_id": user, "report_date": date_label(day), "total_income": 5, "is_final": true };
        let t1 = now("2026-02-01T00:00:00Z");
        let Some(Write::Upsert {
            set: first,
            if_revision: None,
            ..
        }) = plan_write(
            Kind::Report,
            filter.clone(),
            Some(content.clone()),
            None,
            t1,
            "UTC",
        )
        else {
            panic!("a new document is an unguarded upsert");
        };
        assert_eq!(first.get_i64("revision").unwrap(), 1);
        assert_eq!(first.get_i64("restatements").unwrap(), 0);
        assert!(first.get_datetime("finalized_at").is_ok());
        // Same content again: nothing to write.
        assert_eq!(
            plan_write(
                Kind::Report,
                filter.clone(),
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
            filter.clone(),
            Some(changed),
            Some(&first),
            t2,
            "UTC",
        )
        else {
            panic!("a changed document is a guarded update");
        };
        assert_eq!(second.get_i64("revision").unwrap(), 2);
        assert_eq!(second.get_i64("restatements").unwrap(), 1);
        assert_eq!(second.get("created_at"), first.get("created_at"));
        assert_eq!(second.get("finalized_at"), first.get("finalized_at"));
        // Gone from the source: deleted.
        assert!(matches!(
            plan_write(Kind::Report, filter, None, Some(&second), t2, "UTC"),
            Some(Write::Delete { .. })
        ));
    }
}
