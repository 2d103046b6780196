//! `reconcile`: the scan of [`crate::batch::scan`] over all history,
//! reporting every document that differs from a from-scratch computation
//! and every pocket whose balance its transactions do not explain; with
//! `repair` it writes exactly those documents.

use std::collections::BTreeMap;

use crate::error::Result;
use bson::oid::ObjectId;
use chrono::{DateTime, Utc};
use mongodb::Database;

use crate::batch::scan::{Drift, Range, Scanner, Scope};
use crate::core::calendar::Calendar;
use crate::core::reports::Kind;
use crate::core::source::RejectReason;
use crate::mongo::bulk::{self, WriteStats};
use crate::ops::progress::Progress;
use crate::plan::compare::DocChange;
use crate::plan::write::Write;

/// What a reconcile found (and, with repair, changed).
#[derive(Debug, Default)]
pub struct ReconcileReport {
    pub users: u64,
    pub documents: u64,
    /// Missing, surplus and differing documents (stale labels excluded).
    pub differences: Vec<DocChange>,
    /// Documents whose only differences are labels.
    pub stale_labels: Vec<DocChange>,
    pub drifts: Vec<Drift>,
    pub rejects: BTreeMap<RejectReason, u64>,
    pub repaired: Option<WriteStats>,
}

impl ReconcileReport {
    pub fn count(&self, kind: Kind) -> usize {
        self.differences.iter().filter(|d| d.kind == kind).count()
    }

    pub fn users_with_drift(&self) -> Vec<ObjectId> {
        let mut users: Vec<ObjectId> = self.drifts.iter().map(|d| d.user).collect();
        users.dedup();
        users
    }
}

/// Recomputes `range` and compares it with the stored documents. Reads all
/// history, so that drift can be measured.
pub async fn reconcile(
    db: &Database,
    cal: Calendar,
    range: Range,
    now: DateTime<Utc>,
    repair: bool,
    show_progress: bool,
) -> Result<ReconcileReport> {
    let days = (range.to - range.from).num_days() as u64 + 1;
    let mut scanner = Scanner::open(db, cal, range, now, Scope::AllHistory).await?;
    let mut progress = Progress::new("reconcile", days, show_progress);
    let mut report = ReconcileReport::default();
    while let Some(user) = scanner.next_user().await? {
        report.documents += user.documents as u64;
        for change in user.changes {
            if change.difference.is_stale_label() {
                report.stale_labels.push(change);
            } else {
                report.differences.push(change);
            }
        }
        report.drifts.extend(user.drifts);
        progress.update(scanner.users_done, scanner.users_with_pockets() as u64);
    }
    progress.finish();
    report.users = scanner.users_done;
    report.rejects = scanner.reject_counts.clone();
    if repair {
        let writes: Vec<Write> = report
            .differences
            .iter()
            .chain(&report.stale_labels)
            .map(|c| c.write.clone())
            .collect();
        report.repaired = Some(bulk::execute(db, writes, None).await?);
        scanner.flush_rejects(db, None).await?;
    }
    Ok(report)
}
