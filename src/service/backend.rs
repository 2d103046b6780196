//! The seams of the service loop: everything the active instance asks of
//! the server, as one trait. [`Mongo`] is the real one; `tests/simulation.rs`
//! drives the very same loop against an in-memory one, with crashes and
//! failures between any two awaits.
//!
//! Each method is one await of the loop: a crash can strike before or after
//! any of them, never inside the loop's own bookkeeping.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Context, Result};
use bson::oid::ObjectId;
use bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use mongodb::change_stream::event::ResumeToken;
use mongodb::change_stream::ChangeStream;
use mongodb::options::{FullDocumentBeforeChangeType, FullDocumentType};
use mongodb::Database;

use crate::batch::backfill;
use crate::batch::scan::{self, Focus, Range, UserResult};
use crate::core::calendar::Calendar;
use crate::core::reports::{Categories, Kind};
use crate::core::source::{RejectReason, SourceId};
use crate::mongo::bulk::{self, WriteStats};
use crate::mongo::connect;
use crate::mongo::lease::{self, Fence};
use crate::mongo::rejects;
use crate::mongo::state::{self, Checkpoint, Claim};
use crate::mongo::{POCKETS, TRANSACTIONS};
use crate::plan::write::Write;

/// Source documents found invalid: (collection, id, reason).
pub type Rejects = Vec<(&'static str, SourceId, RejectReason)>;

/// Where changed documents counted (answers to [`Backend::locate`]):
/// transaction id (its `Bson` text) → (user, day) of each report listing
/// it; pocket id → users whose reports list it.
#[derive(Debug, Default)]
pub struct Located {
    pub transactions: HashMap<String, Vec<(ObjectId, NaiveDate)>>,
    pub pockets: HashMap<String, HashSet<ObjectId>>,
}

/// How a change stream is opened.
#[derive(Clone, Debug)]
pub struct Watch {
    pub resume_after: Option<ResumeToken>,
    pub start_at: Option<Timestamp>,
    pub pre_images: bool,
}

/// An open change stream of `transactions` and `pockets`.
pub trait Changes: Send {
    /// The next event, or `None` when the server has none now (after
    /// waiting a little, as `maxAwaitTimeMS` does).
    fn next_if_any(&mut self) -> impl Future<Output = Result<Option<RawDocumentBuf>>> + Send;
    /// The token after the last event returned (or of the last empty batch).
    fn resume_token(&self) -> Option<ResumeToken>;
}

/// What the active instance asks of the server.
pub trait Backend: Send + Sync {
    type Changes: Changes;

    /// Output indexes; lines of advice (`suggestion: …`).
    fn init(&self, pre_images: bool) -> impl Future<Output = Result<Vec<String>>> + Send;
    fn load_checkpoint(&self) -> impl Future<Output = Result<Checkpoint>> + Send;
    fn save_checkpoint(
        &self,
        c: &Checkpoint,
        now: DateTime<Utc>,
        fence: Option<&Fence>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The server's time now: a stream started at it misses nothing later.
    fn operation_time(&self) -> impl Future<Output = Result<Timestamp>> + Send;
    /// Computes `range` from the source and writes what differs; the
    /// documents changed.
    fn backfill(
        &self,
        cal: Calendar,
        range: Range,
        now: DateTime<Utc>,
        fence: Option<Fence>,
    ) -> impl Future<Output = Result<u64>> + Send;
    fn load_categories(&self) -> impl Future<Output = Result<Categories>> + Send;
    /// Keys ([`scan::reject_key`]) of the documents with a reject record.
    fn load_reject_keys(&self) -> impl Future<Output = Result<HashSet<String>>> + Send;
    /// A focused scan ([`scan::scan_since_with`]): each user's changes (and
    /// what to keep in memory) to `sink`; the invalid documents it read.
    #[allow(clippy::too_many_arguments)]
    fn scan(
        &self,
        cal: Calendar,
        range: Range,
        now: DateTime<Utc>,
        since: NaiveDate,
        trusted_from: NaiveDate,
        focus: Focus,
        sink: &mut (dyn FnMut(UserResult) + Send),
    ) -> impl Future<Output = Result<Rejects>> + Send;
    fn watch(&self, w: Watch) -> impl Future<Output = Result<Self::Changes>> + Send;
    fn execute(
        &self,
        writes: Vec<Write>,
        fence: Option<&Fence>,
    ) -> impl Future<Output = Result<WriteStats>> + Send;
    /// Where the given transactions and pockets counted, from the reports.
    fn locate(&self, ids: Vec<Bson>) -> impl Future<Output = Result<Located>> + Send;
    /// [`scan::first_stored_days`].
    fn first_stored_days(
        &self,
        users: &[ObjectId],
    ) -> impl Future<Output = Result<HashMap<ObjectId, NaiveDate>>> + Send;
    fn record_rejects(
        &self,
        rejects: &[(&'static str, SourceId, RejectReason)],
        now: DateTime<Utc>,
        fence: Option<&Fence>,
    ) -> impl Future<Output = Result<()>> + Send;
    fn clear_rejects(
        &self,
        corrected: &[(&'static str, SourceId)],
        fence: Option<&Fence>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// [`rejects::revalidate_rejects`]: after events were lost.
    fn revalidate_rejects(&self, fence: Option<&Fence>)
        -> impl Future<Output = Result<u64>> + Send;
    /// The last period of `kind` finalized, and when.
    fn last_finalized(
        &self,
        kind: Kind,
    ) -> impl Future<Output = Result<Option<(NaiveDate, DateTime<Utc>)>>> + Send;
    #[allow(clippy::too_many_arguments)]
    fn claim(
        &self,
        kind: Kind,
        period: NaiveDate,
        owner: &str,
        now: DateTime<Utc>,
        stale_after: chrono::Duration,
        fence: Option<&Fence>,
    ) -> impl Future<Output = Result<Claim>> + Send;
    fn finish(
        &self,
        kind: Kind,
        period: NaiveDate,
        documents: u64,
        now: DateTime<Utc>,
        fence: Option<&Fence>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// A finalization step from the source (periods outside the window).
    #[allow(clippy::too_many_arguments)]
    fn finalize(
        &self,
        cal: Calendar,
        kind: Kind,
        period: NaiveDate,
        now: DateTime<Utc>,
        trusted_from: NaiveDate,
        fence: Option<&Fence>,
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Marks every document of a period final; how many it changed.
    fn mark_final(
        &self,
        kind: Kind,
        period: NaiveDate,
        now: DateTime<Utc>,
        fence: Option<&Fence>,
    ) -> impl Future<Output = Result<u64>> + Send;

    // The lease ([`crate::mongo::lease`]): one active instance, fenced writes.

    /// Waits until `owner` holds the lease; `None` once `stop` is set.
    fn acquire(
        &self,
        owner: &str,
        ttl: Duration,
        stop: &AtomicBool,
    ) -> impl Future<Output = Result<Option<Fence>>> + Send;
    /// Renews the lease every `ttl / 3` until it is lost, then sets `lost`.
    fn keep(
        &self,
        fence: Fence,
        ttl: Duration,
        lost: Arc<AtomicBool>,
    ) -> impl Future<Output = ()> + Send;
    fn release(&self, fence: &Fence) -> impl Future<Output = Result<bool>> + Send;
    /// Whether the server answers (a standby's readiness).
    fn ping(&self) -> impl Future<Output = bool> + Send;
}

/// The real server.
#[derive(Clone, Debug)]
pub struct Mongo(pub Database);

/// A MongoDB change stream, read raw.
pub struct MongoChanges(ChangeStream<RawDocumentBuf>);

impl Changes for MongoChanges {
    async fn next_if_any(&mut self) -> Result<Option<RawDocumentBuf>> {
        Ok(self.0.next_if_any().await?)
    }

    fn resume_token(&self) -> Option<ResumeToken> {
        self.0.resume_token()
    }
}

impl Backend for Mongo {
    type Changes = MongoChanges;

    async fn init(&self, pre_images: bool) -> Result<Vec<String>> {
        connect::init(&self.0, false, pre_images).await
    }

    async fn load_checkpoint(&self) -> Result<Checkpoint> {
        state::load_checkpoint(&self.0).await
    }

    async fn save_checkpoint(
        &self,
        c: &Checkpoint,
        now: DateTime<Utc>,
        fence: Option<&Fence>,
    ) -> Result<()> {
        state::save_checkpoint(&self.0, c, now, fence).await
    }

    async fn operation_time(&self) -> Result<Timestamp> {
        let reply = self
            .0
            .run_command(doc! { "ping": 1 })
            .await
            .context("asking the server for its time")?;
        reply
            .get_timestamp("operationTime")
            .or_else(|_| reply.get_document("$clusterTime").and_then(|c| c.get_timestamp("clusterTime")))
            .context("the server reports no operationTime: a replica set (or SecantusDB) is required for change streams")
    }

    async fn backfill(
        &self,
        cal: Calendar,
        range: Range,
        now: DateTime<Utc>,
        fence: Option<Fence>,
    ) -> Result<u64> {
        let s = backfill::backfill_fenced(&self.0, cal, range, now, false, fence).await?;
        Ok(s.writes.changed())
    }

    async fn load_categories(&self) -> Result<Categories> {
        scan::load_categories(&self.0).await
    }

    async fn load_reject_keys(&self) -> Result<HashSet<String>> {
        scan::load_reject_keys(&self.0).await
    }

    async fn scan(
        &self,
        cal: Calendar,
        range: Range,
        now: DateTime<Utc>,
        since: NaiveDate,
        trusted_from: NaiveDate,
        focus: Focus,
        sink: &mut (dyn FnMut(UserResult) + Send),
    ) -> Result<Rejects> {
        scan::scan_since_with(&self.0, cal, range, now, since, trusted_from, focus, sink).await
    }

    async fn watch(&self, w: Watch) -> Result<MongoChanges> {
        let pipeline = [doc! { "$match": { "ns.coll": { "$in": [TRANSACTIONS, POCKETS] } } }];
        let mut watch = self
            .0
            .watch()
            .pipeline(pipeline)
            .full_document(FullDocumentType::UpdateLookup)
            .max_await_time(Duration::from_millis(200));
        if w.pre_images {
            watch = watch.full_document_before_change(FullDocumentBeforeChangeType::WhenAvailable);
        }
        watch = match (w.resume_after, w.start_at) {
            (Some(t), _) => watch.resume_after(t),
            (None, Some(ts)) => watch.start_at_operation_time(ts),
            (None, None) => watch,
        };
        // Events stay raw: `Event::from_raw` reads the fields in place and
        // materializes only the documents it decodes.
        Ok(MongoChanges(watch.await?.with_type::<RawDocumentBuf>()))
    }

    async fn execute(&self, writes: Vec<Write>, fence: Option<&Fence>) -> Result<WriteStats> {
        bulk::execute(&self.0, writes, fence).await
    }

    async fn locate(&self, ids: Vec<Bson>) -> Result<Located> {
        let mut located = Located::default();
        let reports = self.0.collection::<Document>(Kind::Report.collection());
        let [by_transaction, by_pocket] = connect::LOCATE_FIELDS;
        // One find per field, each answered by its own index (an `$or` of
        // both is a collection scan on SecantusDB); a report both find is
        // read once.
        let mut seen = HashSet::new();
        for field in [by_transaction, by_pocket] {
            let mut cursor = reports
                .find(doc! { field: { "$in": ids.clone() } })
                .projection(
                    doc! { "user_id": 1, "report_date": 1, by_pocket: 1, by_transaction: 1 },
                )
                .await?;
            while let Some(r) = cursor.try_next().await? {
                let key = (
                    r.get_object_id("user_id").ok(),
                    r.get_datetime("report_date").ok().copied(),
                );
                if seen.insert(key) {
                    located.add_report(&r);
                }
            }
        }
        Ok(located)
    }

    async fn first_stored_days(&self, users: &[ObjectId]) -> Result<HashMap<ObjectId, NaiveDate>> {
        scan::first_stored_days(&self.0, users).await
    }

    async fn record_rejects(
        &self,
        rejects: &[(&'static str, SourceId, RejectReason)],
        now: DateTime<Utc>,
        fence: Option<&Fence>,
    ) -> Result<()> {
        rejects::record_rejects(&self.0, rejects, now, fence).await
    }

    async fn clear_rejects(
        &self,
        corrected: &[(&'static str, SourceId)],
        fence: Option<&Fence>,
    ) -> Result<()> {
        rejects::clear_rejects(&self.0, corrected, fence).await
    }

    async fn revalidate_rejects(&self, fence: Option<&Fence>) -> Result<u64> {
        rejects::revalidate_rejects(&self.0, fence).await
    }

    async fn last_finalized(&self, kind: Kind) -> Result<Option<(NaiveDate, DateTime<Utc>)>> {
        state::last_finalized(&self.0, kind.cli_name()).await
    }

    async fn claim(
        &self,
        kind: Kind,
        period: NaiveDate,
        owner: &str,
        now: DateTime<Utc>,
        stale_after: chrono::Duration,
        fence: Option<&Fence>,
    ) -> Result<Claim> {
        state::claim(
            &self.0,
            kind.cli_name(),
            period,
            owner,
            now,
            stale_after,
            fence,
        )
        .await
    }

    async fn finish(
        &self,
        kind: Kind,
        period: NaiveDate,
        documents: u64,
        now: DateTime<Utc>,
        fence: Option<&Fence>,
    ) -> Result<()> {
        state::finish(&self.0, kind.cli_name(), period, documents, now, fence).await
    }

    async fn finalize(
        &self,
        cal: Calendar,
        kind: Kind,
        period: NaiveDate,
        now: DateTime<Utc>,
        trusted_from: NaiveDate,
        fence: Option<&Fence>,
    ) -> Result<u64> {
        crate::batch::finalize::finalize(&self.0, cal, kind, period, now, trusted_from, fence).await
    }

    async fn mark_final(
        &self,
        kind: Kind,
        period: NaiveDate,
        now: DateTime<Utc>,
        fence: Option<&Fence>,
    ) -> Result<u64> {
        crate::batch::finalize::mark_final(&self.0, kind, period, now, fence).await
    }

    async fn acquire(
        &self,
        owner: &str,
        ttl: Duration,
        stop: &AtomicBool,
    ) -> Result<Option<Fence>> {
        lease::acquire(&self.0, owner, ttl, stop).await
    }

    async fn keep(&self, fence: Fence, ttl: Duration, lost: Arc<AtomicBool>) {
        lease::keep(self.0.clone(), fence, ttl, lost).await
    }

    async fn release(&self, fence: &Fence) -> Result<bool> {
        lease::release(&self.0, fence).await
    }

    async fn ping(&self) -> bool {
        self.0.run_command(doc! { "ping": 1 }).await.is_ok()
    }
}

impl Located {
    /// Adds what one stored report (or its projection) lists.
    pub fn add_report(&mut self, r: &Document) {
        let (Ok(user), Ok(day)) = (r.get_object_id("user_id"), r.get_datetime("report_date"))
        else {
            return;
        };
        let day = crate::core::calendar::label_date(*day);
        for p in r
            .get_array("transactions_by_pocket")
            .map(|a| a.as_slice())
            .unwrap_or(&[])
        {
            let Some(p) = p.as_document() else { continue };
            if let Some(pid) = p.get("pocket_id") {
                self.pockets
                    .entry(pid.to_string())
                    .or_default()
                    .insert(user);
            }
            for t in p
                .get_array("transactions")
                .map(|a| a.as_slice())
                .unwrap_or(&[])
            {
                if let Some(tid) = t.as_document().and_then(|t| t.get("transaction_id")) {
                    self.transactions
                        .entry(tid.to_string())
                        .or_default()
                        .push((user, day));
                }
            }
        }
    }
}
