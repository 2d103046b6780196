//! tally's own state in MongoDB: the stream checkpoint and the record of
//! finalizations (once per (kind, period), across restarts and instances).
//!
//! The checkpoint is written only after the writes of every event it covers
//! have been applied. Those writes are recomputations from the source, so
//! replaying events after a crash rewrites the same content: nothing is
//! lost and nothing is counted twice.

use crate::error::{Context, Result};
use bson::oid::ObjectId;
use bson::{doc, Bson, DateTime as BsonDateTime, Document, Timestamp};
use chrono::{DateTime, NaiveDate, Utc};
use mongodb::change_stream::event::ResumeToken;
use mongodb::Database;

use crate::core::calendar::{date_label, label_date};
use crate::mongo::errors;
use crate::mongo::lease::{self, Fence};

pub const STATE: &str = "tally_state";
pub const FINALIZATIONS: &str = "tally_finalizations";
const CHECKPOINT_ID: &str = "checkpoint";

/// Where the stream resumes and what is still pending.
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    pub resume_token: Option<ResumeToken>,
    /// Set on a first start: stream from this operation time.
    pub start_at: Option<Timestamp>,
    /// First day of the window tally built on its first start: snapshots
    /// exist from here on.
    pub managed_from: Option<NaiveDate>,
    /// Users whose past documents differ from the source and wait for the
    /// settle delay (drift), with the instant first seen.
    pub pending: Vec<(ObjectId, DateTime<Utc>)>,
    /// Wall time of the last event covered.
    pub last_event_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    /// Last report day marked final (23:59 step).
    pub reports_final_through: Option<NaiveDate>,
}

fn millis(t: DateTime<Utc>) -> BsonDateTime {
    BsonDateTime::from_millis(t.timestamp_millis())
}

fn instant(d: &BsonDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(d.timestamp_millis()).unwrap_or_default()
}

pub async fn load_checkpoint(db: &Database) -> Result<Checkpoint> {
    let Some(d) = db
        .collection::<Document>(STATE)
        .find_one(doc! { "_id": CHECKPOINT_ID })
        .await
        .context("reading the checkpoint")?
    else {
        return Ok(Checkpoint::default());
    };
    let resume_token = match d.get("resume_token") {
        Some(Bson::Null) | None => None,
        Some(b) => Some(bson::from_bson(b.clone()).context("decoding the stored resume token")?),
    };
    let pending = d
        .get_array("pending")
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    let p = p.as_document()?;
                    Some((
                        p.get_object_id("user").ok()?,
                        instant(p.get_datetime("since").ok()?),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Checkpoint {
        resume_token,
        start_at: d.get_timestamp("start_at").ok(),
        managed_from: d.get_datetime("managed_from").ok().map(|l| label_date(*l)),
        pending,
        last_event_at: d.get_datetime("last_event_at").ok().map(instant),
        updated_at: d.get_datetime("updated_at").ok().map(instant),
        reports_final_through: d
            .get_datetime("reports_final_through")
            .ok()
            .map(|l| label_date(*l)),
    })
}

/// Writes the checkpoint; with a `fence`, only while the lease is this
/// instance's ([`lease::fenced`]).
pub async fn save_checkpoint(
    db: &Database,
    c: &Checkpoint,
    now: DateTime<Utc>,
    fence: Option<&Fence>,
) -> Result<()> {
    let token = match &c.resume_token {
        Some(t) => bson::to_bson(t).context("encoding the resume token")?,
        None => Bson::Null,
    };
    let pending: Vec<Document> = c
        .pending
        .iter()
        .map(|(u, since)| doc! { "user": *u, "since": millis(*since) })
        .collect();
    let set = doc! {
        "resume_token": token,
        "start_at": c.start_at.map_or(Bson::Null, Bson::Timestamp),
        "managed_from": c.managed_from.map_or(Bson::Null, |d| Bson::DateTime(date_label(d))),
        "pending": pending,
        "last_event_at": c.last_event_at.map_or(Bson::Null, |t| Bson::DateTime(millis(t))),
        "reports_final_through": c.reports_final_through.map_or(Bson::Null, |d| Bson::DateTime(date_label(d))),
        "updated_at": millis(now),
    };
    let coll = db.collection::<Document>(STATE);
    let update = doc! { "$set": set };
    match fence {
        None => {
            coll.update_one(doc! { "_id": CHECKPOINT_ID }, update)
                .upsert(true)
                .await
                .context("writing the checkpoint")?;
        }
        Some(fence) => {
            lease::fenced(db, fence, |s| {
                let (coll, update) = (coll.clone(), update.clone());
                Box::pin(async move {
                    coll.update_one(doc! { "_id": CHECKPOINT_ID }, update)
                        .upsert(true)
                        .session(s)
                        .await
                        .context("writing the checkpoint")?;
                    Ok(())
                })
            })
            .await?;
        }
    }
    Ok(())
}

/// The id of a finalization record, e.g. `snapshots:2026-11-28`.
pub fn finalization_id(kind: &str, period: NaiveDate) -> String {
    format!("{kind}:{period}")
}

/// Outcome of trying to claim a finalization.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// This instance runs it.
    Mine,
    /// Done already, or running elsewhere.
    Taken,
}

/// Claims (kind, period) for this instance. A claim left running longer
/// than `stale_after` (its owner died) can be taken over; a claim this
/// instance already holds (its run failed and is retried) is still its own.
/// With a `fence`, the claim records its token, and a claim made under an
/// older lease (its maker was deposed, or died) is taken over at once; the
/// maker's own later writes are fenced off.
pub async fn claim(
    db: &Database,
    kind: &str,
    period: NaiveDate,
    owner: &str,
    now: DateTime<Utc>,
    stale_after: chrono::Duration,
    fence: Option<&Fence>,
) -> Result<Claim> {
    let coll = db.collection::<Document>(FINALIZATIONS);
    let id = finalization_id(kind, period);
    let token = fence.map_or(Bson::Null, |f| Bson::Int64(f.token));
    let fresh = doc! {
        "_id": &id, "kind": kind, "period": date_label(period), "status": "running",
        "owner": owner, "started_at": millis(now), "token": token.clone(),
    };
    match coll.insert_one(fresh).await {
        Ok(_) => return Ok(Claim::Mine),
        Err(e) if errors::is_duplicate_key(&e) => {}
        Err(e) => return Err(e).context("claiming a finalization"),
    }
    let mut takeover = vec![
        doc! { "owner": owner },
        doc! { "started_at": { "$lt": millis(now - stale_after) } },
    ];
    if let Some(f) = fence {
        takeover.push(doc! { "token": { "$lt": f.token } });
    }
    let stale = coll
        .update_one(
            doc! { "_id": &id, "status": "running", "$or": takeover },
            doc! { "$set": { "owner": owner, "started_at": millis(now), "token": token } },
        )
        .await
        .context("taking over a stale finalization")?;
    Ok(if stale.matched_count == 1 {
        Claim::Mine
    } else {
        Claim::Taken
    })
}

/// Records a finalization done; with a `fence`, only while the lease is
/// this instance's.
pub async fn finish(
    db: &Database,
    kind: &str,
    period: NaiveDate,
    documents: u64,
    now: DateTime<Utc>,
    fence: Option<&Fence>,
) -> Result<()> {
    let coll = db.collection::<Document>(FINALIZATIONS);
    let filter = doc! { "_id": finalization_id(kind, period) };
    let update = doc! { "$set": { "status": "done", "finished_at": millis(now), "documents": documents as i64 } };
    match fence {
        None => {
            coll.update_one(filter, update)
                .await
                .context("recording a finalization")?;
        }
        Some(fence) => {
            lease::fenced(db, fence, |s| {
                let (coll, filter, update) = (coll.clone(), filter.clone(), update.clone());
                Box::pin(async move {
                    coll.update_one(filter, update)
                        .session(s)
                        .await
                        .context("recording a finalization")?;
                    Ok(())
                })
            })
            .await?;
        }
    }
    Ok(())
}

/// The latest period of `kind` finalized, if any.
pub async fn last_finalized(
    db: &Database,
    kind: &str,
) -> Result<Option<(NaiveDate, DateTime<Utc>)>> {
    let d = db
        .collection::<Document>(FINALIZATIONS)
        .find_one(doc! { "kind": kind, "status": "done" })
        .sort(doc! { "period": -1 })
        .await
        .context("reading finalizations")?;
    Ok(d.and_then(|d| {
        Some((
            label_date(*d.get_datetime("period").ok()?),
            instant(d.get_datetime("finished_at").ok()?),
        ))
    }))
}
