//! High availability: one active `tally run` per database, through a lease
//! stored in MongoDB, with a fencing token.
//!
//! The lease is one document of `tally_lease`:
//! `{_id: "tally", owner, token, expires_at, released}`. An instance
//! acquires it when it has expired (or was released), which raises `token`;
//! the holder renews it every TTL/3. Expiry is computed by the server
//! (`$$NOW`), so the instances' clocks do not matter.
//!
//! Invariant kept here: **a write by an instance that lost the lease never
//! lands.** Every write of the active instance ([`fenced`]) runs in a
//! multi-document transaction whose first statement updates the lease
//! document on the condition that the token is still the holder's. A newer
//! acquisition changes the token, so the deposed writer matches nothing and
//! gets [`LostLease`]; and because both write the same document, the server
//! serializes them — a transaction that passed the check commits before the
//! next holder's acquisition, or fails with a write conflict and is retried
//! (and then fails the check). The check is a real change (`$inc`), never a
//! no-op, or the server would not take the document's write lock.
//!
//! What is fenced: the output documents (flushes, the window backfill,
//! finalizations), the checkpoint, and the record of a finished
//! finalization; a finalization claim records its token, so a claim made
//! under an older lease is taken over at once. One transaction per bulk
//! command (at most 1,000 operations), not per flush, keeps transactions
//! small and short; a flush cut short by a lost lease is harmless, since
//! its writes are recomputations and the checkpoint is saved only after
//! them. Not fenced: `tally_rejects` (bookkeeping about source documents,
//! rewritten whenever a document is seen) and index creation.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bson::{doc, Bson, Document};
use chrono::{DateTime, Utc};
use mongodb::options::ReturnDocument;
use mongodb::{ClientSession, Database};
use tracing::{info, warn};

pub const LEASE: &str = "tally_lease";
const LEASE_ID: &str = "tally";
/// Attempts of a fenced transaction that meets transient errors.
const ATTEMPTS: u32 = 5;

/// Proof of holding the lease: the holder and the token of its acquisition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub owner: String,
    pub token: i64,
}

/// A fenced write found that another instance acquired the lease since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LostLease {
    pub token: i64,
}

impl fmt::Display for LostLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lost the lease: fencing token {} is no longer current",
            self.token
        )
    }
}

impl std::error::Error for LostLease {}

/// Whether `e` (or its cause) is [`LostLease`].
pub fn is_lost(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<LostLease>())
}

static LEADER: AtomicBool = AtomicBool::new(false);

/// Whether this process is the active instance now (for metrics, status).
pub fn is_leader() -> bool {
    LEADER.load(Ordering::SeqCst)
}

/// The one place leadership changes (`tail::run` calls it).
pub(crate) fn set_leader(leader: bool) {
    LEADER.store(leader, Ordering::SeqCst);
}

/// The stored lease, for `tally status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub owner: Option<String>,
    pub token: i64,
    pub expires_at: Option<DateTime<Utc>>,
    pub released: bool,
}

pub async fn read(db: &Database) -> Result<Option<LeaseInfo>> {
    let d = db
        .collection::<Document>(LEASE)
        .find_one(doc! { "_id": LEASE_ID })
        .await
        .context("reading the lease")?;
    Ok(d.map(|d| LeaseInfo {
        owner: d.get_str("owner").ok().map(str::to_owned),
        token: d.get_i64("token").unwrap_or(0),
        expires_at: d
            .get_datetime("expires_at")
            .ok()
            .and_then(|t| DateTime::from_timestamp_millis(t.timestamp_millis())),
        released: d.get_bool("released").unwrap_or(false),
    }))
}

fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// One attempt to acquire the lease: it is free when expired, released, or
/// held by `owner` itself (a previous leadership of this instance, which
/// the new token fences off). `None`: another instance holds it.
pub async fn try_acquire(db: &Database, owner: &str, ttl: Duration) -> Result<Option<Fence>> {
    // Compared as milliseconds: SecantusDB (0.7) compares a date with
    // `$$NOW` as equal; the numbers compare right on every server.
    let filter = doc! { "_id": LEASE_ID, "$or": [
        { "$expr": { "$lt": [{ "$toLong": "$expires_at" }, { "$toLong": "$$NOW" }] } },
        { "released": true },
        { "owner": owner },
    ] };
    let update = vec![doc! { "$set": {
        "owner": owner,
        "token": { "$add": [{ "$ifNull": ["$token", 0_i64] }, 1_i64] },
        "expires_at": { "$add": ["$$NOW", ttl_millis(ttl)] },
        "acquired_at": "$$NOW",
        "released": false,
    } }];
    let result = db
        .collection::<Document>(LEASE)
        .find_one_and_update(filter, update)
        .upsert(true)
        .return_document(ReturnDocument::After)
        .await;
    match result {
        Ok(Some(d)) => Ok(Some(Fence {
            owner: owner.to_owned(),
            token: match d.get("token") {
                Some(Bson::Int64(t)) => *t,
                Some(Bson::Int32(t)) => i64::from(*t),
                other => anyhow::bail!("the lease has a token of an unexpected type: {other:?}"),
            },
        })),
        Ok(None) => Ok(None),
        // Held by another: the upsert collided with the existing document.
        Err(e) if crate::state::is_duplicate_key(&e) => Ok(None),
        Err(e) => Err(e).context("acquiring the lease"),
    }
}

/// Extends the lease by `ttl` from the server's now; `false` when it is no
/// longer this fence's.
pub async fn renew(db: &Database, fence: &Fence, ttl: Duration) -> Result<bool> {
    let r = db
        .collection::<Document>(LEASE)
        .update_one(
            doc! { "_id": LEASE_ID, "owner": &fence.owner, "token": fence.token },
            vec![doc! { "$set": { "expires_at": { "$add": ["$$NOW", ttl_millis(ttl)] } } }],
        )
        .await
        .context("renewing the lease")?;
    Ok(r.matched_count == 1)
}

/// Gives the lease up (expires now) so that a standby takes over at once.
pub async fn release(db: &Database, fence: &Fence) -> Result<bool> {
    let r = db
        .collection::<Document>(LEASE)
        .update_one(
            doc! { "_id": LEASE_ID, "owner": &fence.owner, "token": fence.token },
            vec![doc! { "$set": { "expires_at": "$$NOW", "released": true } }],
        )
        .await
        .context("releasing the lease")?;
    Ok(r.matched_count == 1)
}

/// Waits until this instance holds the lease: tries now, then every
/// `ttl / 3`, and at once when the holder releases it (a change stream on
/// the lease wakes the wait). `None` when `stop` is set first. Logs one
/// line when it starts standing by behind another holder.
pub async fn acquire(
    db: &Database,
    owner: &str,
    ttl: Duration,
    stop: &AtomicBool,
    is_transient: fn(&anyhow::Error) -> bool,
) -> Result<Option<Fence>> {
    let mut announced = false;
    let mut released = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        match try_acquire(db, owner, ttl).await {
            Ok(Some(fence)) => return Ok(Some(fence)),
            Ok(None) if !announced => {
                announced = true;
                let holder = read(db).await.ok().flatten().and_then(|l| l.owner);
                info!(
                    holder = holder.as_deref().unwrap_or("?"),
                    "Standing by: another instance holds the lease."
                );
            }
            Ok(None) => {}
            Err(e) if is_transient(&e) => {
                warn!(error = %crate::store::redact_uri(&format!("{e:#}")), "Cannot reach the lease yet; retrying.");
            }
            Err(e) => return Err(e),
        }
        if released.is_none() {
            let pipeline = [doc! { "$match": { "$or": [
                { "operationType": { "$in": ["delete", "insert", "replace", "drop", "invalidate"] } },
                { "updateDescription.updatedFields.released": true },
            ] } }];
            released = db
                .collection::<Document>(LEASE)
                .watch()
                .pipeline(pipeline)
                .max_await_time(Duration::from_millis(200))
                .await
                .ok();
        }
        let until = Instant::now() + ttl / 3;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            match released.as_mut() {
                Some(stream) => match stream.next_if_any().await {
                    Ok(Some(_)) => break,
                    Ok(None) => {}
                    Err(_) => released = None,
                },
                None => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// Renews the lease every `ttl / 3` until it is lost — another instance
/// acquired it — then sets `lost`. Run it as a task beside the active
/// instance's work and abort it when that ends.
///
/// A renewal that fails (the server is unreachable) is retried, and the
/// instance stays active: once the server answers again, either nobody
/// took the lease and work goes on where it was, or someone did and the
/// next renewal says so. Meanwhile its writes are fenced, so an expired
/// lease is never a risk — only the fence decides.
pub async fn keep(db: Database, fence: Fence, ttl: Duration, lost: Arc<AtomicBool>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(ttl / 3).await;
        match renew(&db, &fence, ttl).await {
            Ok(true) => failing = false,
            Ok(false) => break,
            Err(e) if !failing => {
                failing = true;
                warn!(error = %crate::store::redact_uri(&format!("{e:#}")), "Cannot renew the lease; retrying.");
            }
            Err(_) => {}
        }
    }
    lost.store(true, Ordering::SeqCst);
}

/// A fenced transaction's body: given the session, the writes to run in it.
pub type Body<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Runs `body` in a transaction that first proves `fence` current (see the
/// module docs). [`LostLease`] when it is not; nothing of `body` is then
/// written. A body's error aborts the transaction; transient transaction
/// errors (write conflicts) run the whole transaction again, so `body` must
/// be repeatable.
pub async fn fenced<T, F>(db: &Database, fence: &Fence, mut body: F) -> Result<T>
where
    F: for<'s> FnMut(&'s mut ClientSession) -> Body<'s, T>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            let mut s = db
                .client()
                .start_session()
                .await
                .context("starting a session")?;
            s.start_transaction().await?;
            let check = db
                .collection::<Document>(LEASE)
                .update_one(
                    doc! { "_id": LEASE_ID, "owner": &fence.owner, "token": fence.token },
                    doc! { "$inc": { "writes": 1_i64 }, "$currentDate": { "last_write_at": true } },
                )
                .session(&mut s)
                .await
                .context("checking the lease")?;
            if check.matched_count == 0 {
                let _ = s.abort_transaction().await;
                return Err(LostLease { token: fence.token }.into());
            }
            match body(&mut s).await {
                Ok(v) => {
                    s.commit_transaction()
                        .await
                        .context("committing a fenced write")?;
                    Ok(v)
                }
                Err(e) => {
                    let _ = s.abort_transaction().await;
                    Err(e)
                }
            }
        }
        .await;
        match result {
            Err(e) if attempt < ATTEMPTS && !is_lost(&e) && is_transient_transaction(&e) => {
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
            }
            r => return r,
        }
    }
}

/// A write conflict, or a commit whose outcome is unknown: run it again.
fn is_transient_transaction(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<mongodb::error::Error>())
        .any(|m| {
            m.contains_label("TransientTransactionError")
                || m.contains_label("UnknownTransactionCommitResult")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_lease_is_recognized_under_context() {
        let e = anyhow::Error::from(LostLease { token: 7 }).context("writing the checkpoint");
        assert!(is_lost(&e));
        assert!(format!("{e:#}").contains("fencing token 7"));
        assert!(!is_lost(&anyhow::anyhow!("something else")));
    }
}
