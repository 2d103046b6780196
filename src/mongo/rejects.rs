//! `tally_rejects`: one record per invalid source document, with its
//! reason; written under the lease's fence when one is held.

use std::collections::HashMap;

use crate::error::{Context, Result};
use bson::{doc, Bson, DateTime as BsonDateTime, Document};
use chrono::{DateTime, Utc};
use mongodb::Database;

use crate::core::source::{RejectReason, SourceId};
use crate::mongo::bulk::{check_write_errors, BATCH_OPS};
use crate::mongo::lease::{self, Fence};
use crate::mongo::{POCKETS, REJECTS, TRANSACTIONS};

/// Records invalid source documents in `tally_rejects`; `first_seen` is kept.
pub async fn record_rejects(
    db: &Database,
    rejects: &[(&'static str, SourceId, RejectReason)],
    now: DateTime<Utc>,
    fence: Option<&Fence>,
) -> Result<()> {
    let now = BsonDateTime::from_millis(now.timestamp_millis());
    for chunk in rejects.chunks(BATCH_OPS) {
        let updates: Vec<Document> = chunk
            .iter()
            .map(|(coll, id, reason)| {
                doc! {
                    "q": { "collection": *coll, "source_id": id.to_bson() },
                    "u": {
                        "$set": { "reason": reason.as_str(), "last_seen": now },
                        "$setOnInsert": { "first_seen": now },
                    },
                    "upsert": true,
                }
            })
            .collect();
        let cmd = doc! { "update": REJECTS, "updates": updates, "ordered": false };
        let reply = write_command(db, cmd, fence)
            .await
            .context("recording rejected source documents")?;
        check_write_errors(&reply).context("recording rejected source documents")?;
    }
    Ok(())
}

/// Every reject record, as (collection, source `_id`).
pub async fn reject_records(db: &Database) -> Result<Vec<(String, Bson)>> {
    use futures::TryStreamExt;
    let mut records = Vec::new();
    let mut cursor = db
        .collection::<Document>(REJECTS)
        .find(doc! {})
        .await
        .context("reading tally_rejects")?;
    while let Some(d) = cursor.try_next().await.context("reading tally_rejects")? {
        if let (Ok(coll), Some(id)) = (d.get_str("collection"), d.get("source_id")) {
            records.push((coll.to_owned(), id.clone()));
        }
    }
    Ok(records)
}

/// Reads every reject record's source document again and removes the
/// records of those now valid or gone; how many it removed. After events
/// were lost (history lost, a source collection dropped) nothing else would
/// tell that a recorded document was corrected or deleted meanwhile — a
/// recompute of the window reads only the documents dated in it.
pub async fn revalidate_rejects(db: &Database, fence: Option<&Fence>) -> Result<u64> {
    use futures::TryStreamExt;
    let mut recorded: HashMap<&'static str, Vec<Bson>> = HashMap::new();
    for (coll, id) in reject_records(db).await? {
        let coll = match coll.as_str() {
            TRANSACTIONS => TRANSACTIONS,
            POCKETS => POCKETS,
            _ => continue,
        };
        recorded.entry(coll).or_default().push(id);
    }
    let mut corrected = Vec::new();
    for (coll, ids) in recorded {
        let mut invalid = std::collections::HashSet::new();
        for chunk in ids.chunks(BATCH_OPS) {
            let mut docs = db
                .collection::<Document>(coll)
                .find(doc! { "_id": { "$in": chunk } })
                .await
                .with_context(|| format!("reading {coll} with reject records"))?;
            while let Some(d) = docs.try_next().await? {
                let still = match coll {
                    TRANSACTIONS => crate::core::source::decode_transaction(&d).is_err(),
                    _ => crate::core::source::decode_pocket(&d)
                        .map_or(true, |p| p.reject_reason().is_some()),
                };
                if still {
                    invalid.insert(format!("{:?}", d.get("_id").unwrap_or(&Bson::Null)));
                }
            }
        }
        corrected.extend(
            ids.iter()
                .filter(|id| !invalid.contains(&format!("{id:?}")))
                .map(|id| (coll, SourceId::from_bson(id))),
        );
    }
    clear_rejects(db, &corrected, fence).await?;
    Ok(corrected.len() as u64)
}

/// A write command, behind `fence` when there is one: a deposed leader's
/// reject records, from verdicts it held while cut off, must not land.
async fn write_command(db: &Database, cmd: Document, fence: Option<&Fence>) -> Result<Document> {
    match fence {
        None => Ok(db.run_command(cmd).await?),
        Some(fence) => {
            lease::fenced(db, fence, |s| {
                let (db, cmd) = (db.clone(), cmd.clone());
                Box::pin(async move { Ok(db.run_command(cmd).session(s).await?) })
            })
            .await
        }
    }
}

/// Removes the reject records of documents that are now valid.
pub async fn clear_rejects(
    db: &Database,
    corrected: &[(&'static str, SourceId)],
    fence: Option<&Fence>,
) -> Result<()> {
    for chunk in corrected.chunks(BATCH_OPS) {
        let deletes: Vec<Document> = chunk
            .iter()
            .map(|(coll, id)| doc! { "q": { "collection": *coll, "source_id": id.to_bson() }, "limit": 1 })
            .collect();
        let cmd = doc! { "delete": REJECTS, "deletes": deletes, "ordered": false };
        let reply = write_command(db, cmd, fence)
            .await
            .context("removing reject records of corrected documents")?;
        check_write_errors(&reply).context("removing reject records of corrected documents")?;
    }
    Ok(())
}
