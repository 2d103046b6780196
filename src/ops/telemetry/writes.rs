//! What a flush's planned writes do to the output collections, counted
//! before [`bulk::execute`](crate::mongo::bulk::execute) consumes them.

use crate::core::reports::Kind;
use crate::plan::write::Write;

/// What a list of planned writes will do, per output collection: taken
/// before [`bulk::execute`](crate::mongo::bulk::execute) consumes the list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteMix {
    /// Writes per [`Kind`], in `Kind::ALL` order.
    pub by_kind: [u64; 3],
    /// Upserts that raise `restatements` (see [`restates`]).
    pub restatements: u64,
}

impl WriteMix {
    pub fn of(writes: &[Write]) -> WriteMix {
        let mut mix = WriteMix::default();
        for w in writes {
            mix.by_kind[kind_index(w.kind())] += 1;
            mix.restatements += u64::from(restates(w));
        }
        mix
    }
}

fn kind_index(kind: Kind) -> usize {
    Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

/// Whether a write planned by [`write::plan_write`](crate::plan::write::plan_write)
/// raises `restatements`: it replaces a stored document (it guards a stored
/// revision) that was final. The write does not carry the stored document,
/// so "was final" is read from what plan_write leaves in it: a report keeps
/// its earlier `finalized_at` only when it was final already (a report
/// becoming final gets `finalized_at` = `generated_at`); a snapshot is final
/// from its first write; a monthly summary rewritten complete counts — off
/// only for one written open and closed by a flush before the 00:01 step.
pub fn restates(w: &Write) -> bool {
    let Write::Upsert {
        kind,
        set,
        if_revision: Some(_),
        ..
    } = w
    else {
        return false;
    };
    if !set.get_bool(kind.final_field()).unwrap_or(false) {
        return false;
    }
    match kind {
        Kind::Report => match (
            set.get_datetime("finalized_at"),
            set.get_datetime("generated_at"),
        ) {
            (Ok(fin), Ok(gen)) => fin != gen,
            _ => false,
        },
        Kind::Snapshot | Kind::Monthly => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn raw(d: bson::Document) -> bson::RawDocumentBuf {
        bson::RawDocumentBuf::from_document(&d).unwrap()
    }

    #[test]
    fn restatements_are_updates_of_documents_that_were_final() {
        let at = bson::DateTime::from_millis(1_000);
        let later = bson::DateTime::from_millis(2_000);
        let report = |final_: bool, finalized_at: bson::DateTime, rev: Option<i64>| Write::Upsert {
            kind: Kind::Report,
            user: bson::oid::ObjectId::new(),
            period: chrono::NaiveDate::MIN,
            set: raw(
                doc! { "is_final": final_, "finalized_at": finalized_at, "generated_at": later },
            ),
            if_revision: rev,
            leaves: None,
        };
        assert!(
            restates(&report(true, at, Some(3))),
            "final before, kept finalized_at"
        );
        assert!(
            !restates(&report(true, later, Some(3))),
            "becomes final now"
        );
        assert!(!restates(&report(true, at, None)), "a new document");
        assert!(!restates(&report(false, at, Some(3))), "open");
        let snapshot = Write::Upsert {
            kind: Kind::Snapshot,
            user: bson::oid::ObjectId::new(),
            period: chrono::NaiveDate::MIN,
            set: raw(doc! { "is_complete": true }),
            if_revision: Some(1),
            leaves: None,
        };
        assert!(restates(&snapshot));
        let mix = WriteMix::of(&[snapshot, report(true, at, Some(1))]);
        assert_eq!(mix.by_kind, [1, 1, 0]);
        assert_eq!(mix.restatements, 2);
    }
}
