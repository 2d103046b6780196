//! High availability: one active `tally run` per database, through a lease
//! stored in MongoDB, with a fencing token.
//!
//! The lease is one document of `tally_lease`:
//! `{_id: "tally", owner, token, expires_at, released}`. An instance
//! acquires it when it has expired (or was released), which raises `token`;
//! the holder renews it every TTL/3, and each of its fenced transactions
//! renews it too (below). Expiry is computed by the server (`$$NOW`), so
//! the instances' clocks do not matter.
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
//! **Nothing waits on a dead holder's transaction.** A holder killed in the
//! middle of a fenced transaction leaves it open on the server, and that
//! transaction has written the lease document: every later write to the
//! lease (the successor's acquisition) would wait until the server aborts
//! it — 60 s on `mongod` (`transactionLifetimeLimitSeconds`), on SecantusDB
//! only once another transaction command arrives after 60 s. So each term
//! runs all its fenced transactions on one session, whose id is stored in
//! the lease when the term begins; an instance about to take over a lease
//! that expired or was released first ends that session (`killSessions`),
//! which aborts its open transaction at once. Every lease call has a time
//! limit, so no acquisition, renewal or release waits forever.
//!
//! What is fenced: the output documents (flushes, the window backfill,
//! finalizations), the checkpoint, and the record of a finished
//! finalization; a finalization claim records its token, so a claim made
//! under an older lease is taken over at once.
//!
//! **A transaction is short next to the lease.** From its lease check to
//! its commit a fenced transaction holds the lease document, so the
//! holder's own renewals wait behind it — and behind the next transaction,
//! which may take the document first; so the check itself renews the lease,
//! and a holder that keeps committing keeps its lease whether or not the
//! renewal task gets through. The renewal is visible only at commit, so
//! one transaction that ran longer than the lease
//! has left would let a standby see the lease expired, end the holder's
//! session and take over — and with a backlog that again needs a long
//! transaction, instances could hand the lease around without any of them
//! finishing a flush. So a fenced write goes in several transactions, each
//! ending once it has run a sixth of the TTL ([`Fence::transaction_budget`];
//! `crate::mongo::bulk`). A flush cut short by a lost lease is harmless,
//! since its writes are recomputations and the checkpoint is saved only
//! after them. Not fenced: `tally_rejects` (bookkeeping about source documents,
//! rewritten whenever a document is seen) and index creation.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Context, Result};
use crate::Kind;
use bson::{doc, Bson, Document};
use chrono::{DateTime, Utc};
use mongodb::options::ReturnDocument;
use mongodb::{ClientSession, Database};
use tracing::{info, warn};

use crate::mongo::errors::is_transient_transaction;

pub const LEASE: &str = "tally_lease";
const LEASE_ID: &str = "tally";
/// Attempts of a fenced transaction that meets transient errors.
const ATTEMPTS: u32 = 5;
/// Longest wait for one lease call (acquire, renew, release, read, kill).
pub const CALL_LIMIT: Duration = Duration::from_secs(5);
/// Most renewals [`keep`] has sent and not yet seen answered.
const RENEWALS_IN_FLIGHT: usize = 4;
/// Longest a fenced transaction may take, commit included.
const FENCED_LIMIT: Duration = Duration::from_secs(60);

/// Proof of holding the lease: the holder and the token of its acquisition,
/// and the term's session, on which every fenced transaction runs (its id
/// is in the lease, so a successor can end it; see the module docs).
#[derive(Clone)]
pub struct Fence {
    pub owner: String,
    pub token: i64,
    session: Option<Arc<tokio::sync::Mutex<ClientSession>>>,
    /// The TTL of the acquisition, by which each fenced transaction's lease
    /// check renews the lease and from which its time budget follows
    /// ([`Fence::transaction_budget`]); `None` for a fence made without an
    /// acquisition (it only checks, with the budget of the default TTL).
    renews: Option<Duration>,
    /// When the lease check of the term's last committed fenced
    /// transaction began: that commit renewed the lease from then on
    /// ([`keep`] sends no renewal of its own while it is recent).
    renewed: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Fence {
    /// A fence without a term session: each fenced transaction starts its
    /// own (tests, and callers that never hold the lease for long).
    pub fn new(owner: impl Into<String>, token: i64) -> Fence {
        Fence {
            owner: owner.into(),
            token,
            session: None,
            renews: None,
            renewed: Arc::default(),
        }
    }

    /// The same fence as one acquired with `ttl`: its fenced transactions
    /// renew the lease by `ttl` (a model of the lease, tests/simulation.rs).
    pub fn renewing(self, ttl: Duration) -> Fence {
        Fence {
            renews: Some(ttl),
            ..self
        }
    }

    /// Notes that a fenced transaction whose lease check began at `at`
    /// committed: the lease runs a TTL from then, if the check renews it.
    fn note_renewed(&self, at: Instant) {
        if self.renews.is_none() {
            return;
        }
        if let Ok(mut renewed) = self.renewed.lock() {
            *renewed = Some(renewed.map_or(at, |r| r.max(at)));
        }
    }

    /// Whether a committed fenced transaction renewed the lease within
    /// `within`.
    fn renewed_within(&self, within: Duration) -> bool {
        self.renewed
            .lock()
            .ok()
            .and_then(|r| *r)
            .is_some_and(|at| at.elapsed() < within)
    }

    /// The TTL each fenced transaction renews the lease by, if any.
    pub fn renews(&self) -> Option<Duration> {
        self.renews
    }

    /// How long one fenced transaction may go on adding bulk commands
    /// before it commits and the rest goes in the next one. A transaction
    /// holds the lease document from its first statement to its commit, so
    /// the holder's own renewals wait behind it: one longer than the lease
    /// is left makes the lease look expired to a standby, which then ends
    /// the holder's session (aborting the transaction) and takes over — and
    /// with a backlog that needs a long transaction again, the two can hand
    /// the lease back and forth without either finishing a flush.
    pub fn transaction_budget(&self) -> Duration {
        budget_of(self.renews.unwrap_or(DEFAULT_TTL))
    }
}

/// The lease TTL assumed by a fence made without an acquisition (tests).
const DEFAULT_TTL: Duration = Duration::from_secs(15);

/// A sixth of the TTL: a renewal due (every TTL/3) while a transaction
/// runs waits at most this plus one bulk command.
fn budget_of(ttl: Duration) -> Duration {
    ttl / 6
}

impl Fence {
    /// The lease check a fenced transaction starts with: a real change
    /// (counts the write), and for an acquired fence a renewal by the TTL
    /// from the server's now. The holder's renewal task has to get past the
    /// holder's own transactions on the lease document, and back-to-back
    /// transactions can keep it waiting past the TTL (seen on SecantusDB
    /// during a first start's backfill); a transaction that commits renews
    /// the lease itself, so a busy holder never depends on that task.
    fn check(&self) -> Vec<Document> {
        let mut set = doc! {
            "writes": { "$add": [{ "$ifNull": ["$writes", 0_i64] }, 1_i64] },
            "last_write_at": "$$NOW",
        };
        if let Some(ttl) = self.renews {
            set.insert("expires_at", expiry(ttl));
        }
        vec![doc! { "$set": set }]
    }

    /// Aborts a transaction a cancelled fenced call left open on the term's
    /// session: it holds the lease document, so renewals and the release
    /// would wait behind it. Bounded; a no-op without a term session.
    pub async fn abort_open(&self) {
        let Some(session) = &self.session else { return };
        if let Ok(mut s) = tokio::time::timeout(Duration::from_secs(1), session.lock()).await {
            let _ = tokio::time::timeout(Duration::from_secs(2), s.abort_transaction()).await;
        }
    }
}

impl PartialEq for Fence {
    fn eq(&self, other: &Fence) -> bool {
        (&self.owner, self.token) == (&other.owner, other.token)
    }
}

impl Eq for Fence {}

impl fmt::Debug for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fence")
            .field("owner", &self.owner)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// A lease call that did not answer within [`CALL_LIMIT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedOut(pub &'static str);

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: no answer in time", self.0)
    }
}

impl std::error::Error for TimedOut {}

impl From<TimedOut> for crate::Error {
    fn from(t: TimedOut) -> crate::Error {
        crate::Error::from_source(Kind::TimedOut, t)
    }
}

/// Whether `e` (or its cause) is a call without an answer in time.
pub fn is_timeout(e: &crate::Error) -> bool {
    e.kind() == Kind::TimedOut
}

/// `f`, or [`TimedOut`] after `limit`.
async fn bounded<T>(
    what: &'static str,
    limit: Duration,
    f: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(TimedOut(what).into()),
    }
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

impl From<LostLease> for crate::Error {
    fn from(l: LostLease) -> crate::Error {
        crate::Error::from_source(Kind::LeaseLost, l)
    }
}

/// Whether `e` (or its cause) is [`LostLease`].
pub fn is_lost(e: &crate::Error) -> bool {
    e.kind() == Kind::LeaseLost
}

static LEADER: AtomicBool = AtomicBool::new(false);

/// Whether this process is the active instance now (for metrics, status).
pub fn is_leader() -> bool {
    LEADER.load(Ordering::SeqCst)
}

/// The one place leadership changes (`service::run` calls it).
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
    let d = bounded("reading the lease", CALL_LIMIT, async {
        db.collection::<Document>(LEASE)
            .find_one(doc! { "_id": LEASE_ID })
            .max_time(CALL_LIMIT)
            .await
            .context("reading the lease")
    })
    .await?;
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

/// The expression of a lease's expiry `ttl` from the server's clock now.
fn expiry(ttl: Duration) -> Document {
    let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    doc! { "$add": ["$$NOW", millis] }
}

/// The lease document when it is free for `owner`: expired, released, or
/// held by `owner` itself (a previous leadership of this instance, which
/// the new token fences off).
fn free_for(owner: &str) -> Document {
    // Compared as milliseconds: SecantusDB (0.7) compares a date with
    // `$$NOW` as equal; the numbers compare right on every server.
    doc! { "_id": LEASE_ID, "$or": [
        { "$expr": { "$lt": [{ "$toLong": "$expires_at" }, { "$toLong": "$$NOW" }] } },
        { "released": true },
        { "owner": owner },
    ] }
}

/// One attempt to acquire the lease (free as `free_for` says). `None`:
/// another instance holds it. The previous term's session is ended first,
/// so that its open transaction, if its holder died in one, cannot hold
/// the acquisition up; the new term's session is stored in the lease.
pub async fn try_acquire(db: &Database, owner: &str, ttl: Duration) -> Result<Option<Fence>> {
    // Read first: even an update whose filter does not match would wait
    // behind a holder's open transaction on the lease document.
    if !end_previous_term(db, owner).await? {
        return Ok(None);
    }
    let session = db
        .client()
        .start_session()
        .await
        .context("starting the term's session")?;
    let update = vec![doc! { "$set": {
        "owner": owner,
        "token": { "$add": [{ "$ifNull": ["$token", 0_i64] }, 1_i64] },
        "expires_at": expiry(ttl),
        "acquired_at": "$$NOW",
        "released": false,
        "session": { "$literal": session.id().clone() },
    } }];
    let result = bounded("acquiring the lease", CALL_LIMIT, async {
        Ok(db
            .collection::<Document>(LEASE)
            .find_one_and_update(free_for(owner), update)
            .upsert(true)
            .return_document(ReturnDocument::After)
            .max_time(CALL_LIMIT)
            .await)
    })
    .await?;
    match result {
        Ok(Some(d)) => Ok(Some(Fence {
            owner: owner.to_owned(),
            token: match d.get("token") {
                Some(Bson::Int64(t)) => *t,
                Some(Bson::Int32(t)) => i64::from(*t),
                other => crate::bail!("the lease has a token of an unexpected type: {other:?}"),
            },
            session: Some(Arc::new(tokio::sync::Mutex::new(session))),
            renews: Some(ttl),
            renewed: Arc::default(),
        })),
        Ok(None) => Ok(None),
        // Held by another: the upsert collided with the existing document.
        Err(e) if crate::mongo::errors::is_duplicate_key(&e) => Ok(None),
        Err(e) => Err(e).context("acquiring the lease"),
    }
}

/// Whether the lease is free for `owner` (or does not exist yet). When it
/// is free, first ends the session of the term that held it (killSessions
/// aborts its open transaction, on `mongod` and SecantusDB alike). A server
/// that refuses the kill (no privilege) is logged; the acquisition then
/// waits for the server to abort that transaction on its own.
async fn end_previous_term(db: &Database, owner: &str) -> Result<bool> {
    let read = |filter: Document| async move {
        bounded("reading the lease", CALL_LIMIT, async {
            db.collection::<Document>(LEASE)
                .find_one(filter)
                .projection(doc! { "session": 1 })
                .max_time(CALL_LIMIT)
                .await
                .context("reading the lease")
        })
        .await
    };
    if read(doc! { "_id": LEASE_ID }).await?.is_none() {
        return Ok(true);
    }
    let Some(free) = read(free_for(owner)).await? else {
        return Ok(false);
    };
    let Ok(session) = free.get_document("session") else {
        return Ok(true);
    };
    kill_session(db, session.clone()).await;
    Ok(true)
}

/// `killSessions` of `lsid`: aborts its open transaction at once. A refusal
/// (no privilege) is logged; the server then aborts it on its own, later.
async fn kill_session(db: &Database, lsid: Document) {
    let killed = bounded("ending a session", CALL_LIMIT, async {
        db.client()
            .database("admin")
            .run_command(doc! { "killSessions": [lsid] })
            .await
            .context("ending a session")
    })
    .await;
    if let Err(e) = killed {
        warn!(error = %crate::mongo::connect::redact_uri(&format!("{e:#}")), "Could not end a session; an open transaction of it may delay writes to the lease.");
    }
}

/// Extends the lease by `ttl` from the server's now; `false` when it is no
/// longer this fence's.
pub async fn renew(db: &Database, fence: &Fence, ttl: Duration) -> Result<bool> {
    bounded("renewing the lease", CALL_LIMIT, async {
        let r = db
            .collection::<Document>(LEASE)
            .update_one(
                doc! {
                    "_id": LEASE_ID,
                    "owner": &fence.owner,
                    "token": fence.token,
                    "released": { "$ne": true },
                },
                vec![doc! { "$set": { "expires_at": expiry(ttl) } }],
            )
            .await
            .context("renewing the lease")?;
        Ok(r.matched_count == 1)
    })
    .await
}

/// Gives the lease up (expires now) so that a standby takes over at once.
pub async fn release(db: &Database, fence: &Fence) -> Result<bool> {
    bounded("releasing the lease", CALL_LIMIT, async {
        let r = db
            .collection::<Document>(LEASE)
            .update_one(
                doc! { "_id": LEASE_ID, "owner": &fence.owner, "token": fence.token },
                vec![doc! { "$set": { "expires_at": "$$NOW", "released": true } }],
            )
            .await
            .context("releasing the lease")?;
        Ok(r.matched_count == 1)
    })
    .await
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
            Err(e) if e.is_retryable() => {
                warn!(error = %crate::mongo::connect::redact_uri(&format!("{e:#}")), "Cannot reach the lease yet; retrying.");
            }
            Err(e) => return Err(e),
        }
        if released.is_none() {
            let pipeline = [doc! { "$match": { "$or": [
                { "operationType": { "$in": ["delete", "insert", "replace", "drop", "invalidate"] } },
                { "updateDescription.updatedFields.released": true },
            ] } }];
            let lease = db.collection::<Document>(LEASE);
            let watch = lease
                .watch()
                .pipeline(pipeline)
                .max_await_time(Duration::from_millis(200));
            released = tokio::time::timeout(CALL_LIMIT, watch)
                .await
                .ok()
                .and_then(Result::ok);
        }
        let until = Instant::now() + ttl / 3;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            match released.as_mut() {
                Some(stream) => {
                    match tokio::time::timeout(CALL_LIMIT, stream.next_if_any()).await {
                        Ok(Ok(Some(_))) => break,
                        Ok(Ok(None)) => {}
                        Ok(Err(_)) | Err(_) => released = None,
                    }
                }
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
///
/// **Renewals leave on the clock, not after the last answer.** A busy
/// server answers late, and a renewal waited for before the next one is
/// sent lands every `ttl / 3` plus a round trip: with round trips of a
/// second or more (SecantusDB shared by a test suite on two cores) the
/// lease of a 3 s TTL expired between two renewals while the holder was
/// working, a standby took over and had to load its window again, and the
/// lease went round (tests/faults.rs). Sent every `ttl / 3` whatever is
/// in flight (at most [`RENEWALS_IN_FLIGHT`]), renewals reach the server
/// `ttl / 3` apart when its delay is steady; and when it stalls, the
/// holder's renewals are queued ahead of a standby's acquisition sent
/// later, as they are on `mongod`. A late renewal is harmless: it matches
/// only its own term's token, never a released lease.
///
/// **No renewal while commits renew.** Each fenced transaction's lease
/// check renews the lease, and a renewal sent meanwhile only waits behind
/// the transaction holding the lease document (SecantusDB and `mongod`
/// alike) — on a slow server, renewals the client gave up on pile up
/// there, each still applied later. So a tick sends nothing when a fenced
/// transaction whose check began less than `ttl / 3` ago has committed: a
/// holder that keeps writing renews by its writes alone.
pub async fn keep(db: Database, fence: Fence, ttl: Duration, lost: Arc<AtomicBool>) {
    let mut failing = false;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut clock = tokio::time::interval_at(tokio::time::Instant::now() + ttl / 3, ttl / 3);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = clock.tick() => {
                if in_flight.len() < RENEWALS_IN_FLIGHT && !fence.renewed_within(ttl / 3) {
                    let (db, fence) = (db.clone(), fence.clone());
                    in_flight.spawn(async move { renew(&db, &fence, ttl).await });
                }
            }
            Some(answer) = in_flight.join_next() => match answer {
                Ok(Ok(true)) => failing = false,
                Ok(Ok(false)) => break,
                Ok(Err(e)) if !failing => {
                    failing = true;
                    warn!(error = %crate::mongo::connect::redact_uri(&format!("{e:#}")), "Cannot renew the lease; retrying.");
                }
                Ok(Err(_)) | Err(_) => {}
            },
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
        let result = bounded("a fenced write", FENCED_LIMIT, async {
            // The term's session, or one of this call's own.
            let mut own;
            let mut term;
            let s: &mut ClientSession = match &fence.session {
                Some(session) => {
                    term = session.lock().await;
                    &mut term
                }
                None => {
                    own = db
                        .client()
                        .start_session()
                        .await
                        .context("starting a session")?;
                    &mut own
                }
            };
            // A call cancelled mid-transaction (a time limit, a lost lease)
            // leaves the term's session inside it: end that first.
            let _ = s.abort_transaction().await;
            s.start_transaction().await?;
            let checked_at = Instant::now();
            let check = db
                .collection::<Document>(LEASE)
                .update_one(
                    doc! {
                        "_id": LEASE_ID,
                        "owner": &fence.owner,
                        "token": fence.token,
                        "released": { "$ne": true },
                    },
                    fence.check(),
                )
                .session(&mut *s)
                .await
                .context("checking the lease")?;
            if check.matched_count == 0 {
                let _ = s.abort_transaction().await;
                return Err(LostLease { token: fence.token }.into());
            }
            // A crash at these points leaves a transaction open on the
            // lease document; a failure aborts it like a body's error.
            let written = match crate::mongo::inject::point("fenced.checked") {
                Ok(()) => body(s).await,
                Err(e) => Err(e),
            };
            match written.and_then(|v| crate::mongo::inject::point("fenced.body").map(|()| v)) {
                Ok(v) => {
                    if let Err(e) = s.commit_transaction().await {
                        // A refused commit can leave the transaction open
                        // on the server (a fail point refuses the command
                        // before it runs), holding the lease document, and
                        // the driver sends no abort after a commit: end the
                        // session's server side, as a successor would.
                        let lsid = s.id().clone();
                        kill_session(db, lsid).await;
                        let kind = crate::mongo::errors::kind_of(&e);
                        return Err(crate::Error::from_source(kind, CommitFailed(e)))
                            .context("committing a fenced write");
                    }
                    fence.note_renewed(checked_at);
                    crate::mongo::inject::point("fenced.committed")?;
                    Ok(v)
                }
                Err(e) => {
                    let _ = s.abort_transaction().await;
                    Err(e)
                }
            }
        })
        .await;
        if matches!(&result, Err(e) if is_timeout(e)) {
            fence.abort_open().await;
        }
        match result {
            Err(e) if attempt < ATTEMPTS && !is_lost(&e) && is_retryable_transaction(&e) => {
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
            }
            r => return r,
        }
    }
}

/// A commit the server refused. Without the `UnknownTransactionCommitResult`
/// label the transaction did not commit (SecantusDB answers a WiredTiger
/// commit conflict with `InternalError` and no label), so the whole
/// transaction can run again.
#[derive(Debug)]
struct CommitFailed(mongodb::error::Error);

impl fmt::Display for CommitFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the server refused the commit: {}", self.0)
    }
}

impl std::error::Error for CommitFailed {}

/// Worth running the whole fenced transaction again: a transient error, or
/// a commit the server refused.
fn is_retryable_transaction(e: &crate::Error) -> bool {
    is_transient_transaction(e) || e.find::<CommitFailed>().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_renews_for_the_keeper_from_its_lease_check_on() {
        let fence = Fence::new("a", 1).renewing(Duration::from_secs(3));
        let third = Duration::from_secs(1);
        assert!(!fence.renewed_within(third), "nothing committed yet");
        let clone = fence.clone();
        let old = Instant::now() - Duration::from_secs(2);
        clone.note_renewed(old);
        assert!(
            !fence.renewed_within(third),
            "a check 2 s ago is not recent"
        );
        clone.note_renewed(Instant::now());
        assert!(fence.renewed_within(third), "clones share what they note");
        clone.note_renewed(old);
        assert!(
            fence.renewed_within(third),
            "an older check never moves it back"
        );
        let checks_only = Fence::new("b", 1);
        checks_only.note_renewed(Instant::now());
        assert!(
            !checks_only.renewed_within(third),
            "a fence without an acquisition renews nothing"
        );
    }

    #[test]
    fn a_refused_commit_runs_again_and_other_errors_do_not() {
        let refused = crate::Error::from_source(
            Kind::Fatal,
            CommitFailed(mongodb::error::Error::custom("InternalError")),
        )
        .context("committing a fenced write");
        assert!(is_retryable_transaction(&refused));
        let body = crate::Error::fatal("a fenced bulk write had write errors");
        assert!(!is_retryable_transaction(&body));
        let timed_out = crate::error::Error::from(TimedOut("a fenced write")).context("flushing");
        assert!(is_timeout(&timed_out) && !is_retryable_transaction(&timed_out));
    }

    #[test]
    fn fences_compare_by_owner_and_token_only() {
        assert_eq!(Fence::new("a", 1), Fence::new("a", 1));
        assert_ne!(Fence::new("a", 1), Fence::new("a", 2));
        assert_ne!(Fence::new("a", 1), Fence::new("b", 1));
    }

    #[test]
    fn a_lost_lease_is_recognized_under_context() {
        let e = crate::error::Error::from(LostLease { token: 7 }).context("writing the checkpoint");
        assert!(is_lost(&e));
        assert!(format!("{e:#}").contains("fencing token 7"));
        assert!(!is_lost(&crate::Error::fatal("something else")));
    }
}
