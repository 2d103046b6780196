//! Expected against stored: the changes that bring one user's stored
//! documents to what the data contract says they must hold. Scans compare
//! whole stored documents; the live path compares fingerprints
//! ([`crate::plan::fingerprint`]). Both go through [`compare_user`].

use std::collections::BTreeMap;

use bson::oid::ObjectId;
use bson::{doc, Document};
use chrono::{DateTime, NaiveDate, Utc};

use crate::core::diff::{diff, FieldDiff};
use crate::core::reports::Kind;
use crate::plan::fingerprint::StoredMeta;
use crate::plan::write::{key_filter, same_content, upsert_over, Content, Prior, Write};

/// How a stored document differs from the expected one.
#[derive(Clone, Debug, PartialEq)]
pub enum Difference {
    /// Expected but not stored.
    Missing,
    /// Stored but should not exist.
    Surplus,
    /// Both exist; the fields that differ.
    Fields(Vec<FieldDiff>),
    /// Both exist and the content differs from what tally last stored
    /// (the live path compares fingerprints, not fields).
    Content,
}

impl Difference {
    /// Only labels differ (a rename): information, not a failure.
    pub fn is_stale_label(&self) -> bool {
        matches!(self, Difference::Fields(f) if f.iter().all(|d| d.label_only))
    }
}

/// One document that differs, with the write that repairs it.
#[derive(Clone, Debug, PartialEq)]
pub struct DocChange {
    pub kind: Kind,
    pub user: ObjectId,
    pub period: NaiveDate,
    pub difference: Difference,
    pub write: Write,
}

/// A stored document as a comparison sees it: the whole document (scans)
/// or the tailer's fingerprint of it ([`crate::plan::fingerprint::StoredMeta`]),
/// compared with expected content of type `C`.
pub trait StoredDoc<C> {
    /// What the comparison computes of an expected document once, for
    /// [`difference`](StoredDoc::difference) and for the write it plans:
    /// its fingerprint on the live path, nothing for whole documents.
    fn summary(content: &C) -> Option<u64>;
    /// How `content` (whose [`summary`](StoredDoc::summary) is `summary`)
    /// differs from the stored document; `None` if it doesn't.
    fn difference(&self, content: &C, summary: Option<u64>) -> Option<Difference>;
    /// The stored bookkeeping a write continues from.
    fn prior(&self, kind: Kind) -> Prior;
}

impl StoredDoc<Document> for Document {
    fn summary(_: &Document) -> Option<u64> {
        None
    }

    fn difference(&self, content: &Document, _: Option<u64>) -> Option<Difference> {
        if same_content(content, self) {
            return None;
        }
        let fields = diff(content, self);
        (!fields.is_empty()).then_some(Difference::Fields(fields))
    }

    fn prior(&self, kind: Kind) -> Prior {
        Prior::of(kind, self)
    }
}

/// The changes that bring one user's stored documents (`stored`: those of
/// the compared periods) to `expected`; reports before `reports_open_from`
/// are final. Shared by scans and the live path.
pub fn compare_user<C: Content, S: StoredDoc<C>>(
    user: ObjectId,
    expected: Vec<(Kind, NaiveDate, C)>,
    reports_open_from: NaiveDate,
    mut stored: BTreeMap<(Kind, NaiveDate), S>,
    now: DateTime<Utc>,
    time_zone: &str,
) -> Vec<DocChange> {
    let mut changes = Vec::new();
    for (kind, period, mut content) in expected {
        if kind == Kind::Report && period < reports_open_from && !content.is_final(kind) {
            content = content.into_final(kind);
        }
        let old = stored.remove(&(kind, period));
        let summary = S::summary(&content);
        let difference = match &old {
            None => Difference::Missing,
            Some(s) => match s.difference(&content, summary) {
                None => continue,
                Some(d) => d,
            },
        };
        let prior = old.as_ref().map(|s| s.prior(kind));
        let (mut write, after) =
            upsert_over(kind, user, period, content, prior.as_ref(), now, time_zone);
        if let (Write::Upsert { leaves, .. }, Some(fingerprint)) = (&mut write, summary) {
            // The write adds bookkeeping fields only: `set`'s content is
            // the one summarized.
            *leaves = Some(StoredMeta::of_prior(fingerprint, &after));
        }
        changes.push(DocChange {
            kind,
            user,
            period,
            difference,
            write,
        });
    }
    for ((kind, period), old) in stored {
        // By `_id` when known (cheaper for the server, see `upsert_over`).
        let filter = match old.prior(kind).id {
            Some(id) => doc! { "_id": id },
            None => key_filter(kind, user, period),
        };
        let write = Write::Delete { kind, filter };
        changes.push(DocChange {
            kind,
            user,
            period,
            difference: Difference::Surplus,
            write,
        });
    }
    changes
}
