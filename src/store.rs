//! MongoDB reads and writes: connection, indexes, rejects, and the planning
//! and execution of document writes with their bookkeeping (SPEC §5).
//!
//! Invariants kept here: `created_at` is set once; `revision` starts at 1
//! and grows by one on each change of content; `restatements` grows when
//! the content of an already final document changes; an unchanged document
//! is never written. Writes go out as unordered bulk `update`/`delete`
//! commands, so any server speaking the wire protocol takes them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bson::{doc, Bson, DateTime as BsonDateTime, Document, RawArrayBuf, RawDocumentBuf};
use chrono::{DateTime, NaiveDate, Utc};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, ClientSession, Database, IndexModel};

use crate::calendar::date_label;
use crate::diff::diff;
use crate::errors;
use crate::lease::{self, Fence};
use crate::reports::{Kind, BOOKKEEPING};
use crate::source::{RejectReason, SourceId};

pub const REJECTS: &str = "tally_rejects";
pub const TRANSACTIONS: &str = "transactions";
pub const POCKETS: &str = "pockets";
pub const CATEGORIES: &str = "user_categories";

/// Hides the password (and user) of a connection string.
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://").map(|i| i + 3) else {
        return uri.to_owned();
    };
    let rest = &uri[scheme_end..];
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{}***@{}", &uri[..scheme_end], &rest[at + 1..]),
        None => uri.to_owned(),
    }
}

/// Connects and checks the server answers, within a few seconds.
pub async fn connect(uri: &str, database: &str) -> Result<Database> {
    let redacted = redact_uri(uri);
    let mut opts = ClientOptions::parse(uri).await.map_err(|e| match *e.kind {
        // A malformed URI; anything else (a DNS lookup of a
        // mongodb+srv URI) may pass on a restart.
        mongodb::error::ErrorKind::InvalidArgument { .. } => anyhow::Error::new(crate::UsageError(
            format!("invalid MongoDB URI {redacted}: {}", e.kind),
        )),
        _ => anyhow::anyhow!("cannot resolve the MongoDB URI {redacted}: {}", e.kind),
    })?;
    opts.app_name.get_or_insert_with(|| "tally".to_owned());
    opts.server_selection_timeout
        .get_or_insert(Duration::from_secs(5));
    // Also the timeout of the driver's heartbeat: a server busy serving a
    // large read (SecantusDB during the window load) must not be declared
    // gone, which would interrupt every operation in flight. An unreachable
    // server is still reported after the 5 s of server selection.
    opts.connect_timeout.get_or_insert(Duration::from_secs(30));
    let client = Client::with_options(opts)
        .with_context(|| format!("cannot create a client for {redacted}"))?;
    let db = client.database(database);
    db.run_command(doc! { "ping": 1 })
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach MongoDB at {redacted}: {}", short_error(&e)))?;
    Ok(db)
}

fn short_error(e: &mongodb::error::Error) -> String {
    match &*e.kind {
        mongodb::error::ErrorKind::ServerSelection { .. } => {
            "no server answered within 5 s".to_owned()
        }
        other => other.to_string(),
    }
}

/// Creates the unique indexes of the output collections (and one by period,
/// for the nightly steps) and `tally_rejects`;
/// with `source_index`, also `{user_id: 1, date: 1}` on `transactions`.
/// Returns one line per action, for the operator.
pub async fn init(db: &Database, source_index: bool, pre_images: bool) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for kind in Kind::ALL {
        let model = IndexModel::builder()
            .keys(doc! { "user_id": 1, kind.date_field(): 1 })
            .options(IndexOptions::builder().unique(true).build())
            .build();
        db.collection::<Document>(kind.collection())
            .create_index(model)
            .await
            .with_context(|| format!("creating the unique index of {}", kind.collection()))?;
        done.push(format!(
            "unique index (user_id, {}) on {}",
            kind.date_field(),
            kind.collection()
        ));
        // The nightly steps close one period of every user at once.
        db.collection::<Document>(kind.collection())
            .create_index(
                IndexModel::builder()
                    .keys(doc! { kind.date_field(): 1 })
                    .build(),
            )
            .await
            .with_context(|| format!("creating the period index of {}", kind.collection()))?;
        done.push(format!(
            "index ({}) on {}",
            kind.date_field(),
            kind.collection()
        ));
    }
    let model = IndexModel::builder()
        .keys(doc! { "collection": 1, "source_id": 1 })
        .options(IndexOptions::builder().unique(true).build())
        .build();
    db.collection::<Document>(REJECTS)
        .create_index(model)
        .await
        .context("creating the index of tally_rejects")?;
    done.push(format!("unique index (collection, source_id) on {REJECTS}"));
    // The source indexes the scans need: transactions by (user_id, date),
    // pockets by user_id. They change no document of the source.
    for (coll, keys, name) in [
        (
            TRANSACTIONS,
            doc! { "user_id": 1, "date": 1 },
            "user_id_1_date_1",
        ),
        (POCKETS, doc! { "user_id": 1 }, "user_id_1"),
    ] {
        if source_index {
            let model = IndexModel::builder().keys(keys).build();
            db.collection::<Document>(coll)
                .create_index(model)
                .await
                .with_context(|| format!("creating the index {name} on {coll}"))?;
            done.push(format!("index {name} on {coll}"));
        } else {
            let names = match db.collection::<Document>(coll).list_index_names().await {
                Ok(names) => names,
                // No collection yet: no index either.
                Err(e) if errors::is_namespace_not_found(&e) => Vec::new(),
                Err(e) => {
                    return Err(e).with_context(|| format!("listing the indexes of {coll}"));
                }
            };
            if !names.iter().any(|n| n == name) {
                done.push(format!(
                    "suggestion: index {name} on {coll} is missing; backfill, reconcile and \
                     run query by it — rerun with --create-source-index"
                ));
            }
        }
    }
    if pre_images {
        match enable_pre_images(db).await {
            Ok(()) => done.push("change-stream pre-images enabled on transactions".to_owned()),
            Err(e) => done.push(format!(
                "pre-images not enabled on transactions ({}); tally run still works without them",
                short_error(&e)
            )),
        }
    }
    Ok(done)
}

/// Turns on change-stream pre- and post-images of `transactions` with
/// `collMod`, or `create` when the collection does not exist yet (and
/// `collMod` again if another client created it in between). Needs no
/// `listCollections`, which the least-privilege role lacks.
async fn enable_pre_images(db: &Database) -> mongodb::error::Result<()> {
    let images = doc! { "enabled": true };
    let coll_mod = doc! { "collMod": TRANSACTIONS, "changeStreamPreAndPostImages": images.clone() };
    match db.run_command(coll_mod.clone()).await {
        Err(e) if errors::is_namespace_not_found(&e) => {}
        other => return other.map(drop),
    }
    let create = doc! { "create": TRANSACTIONS, "changeStreamPreAndPostImages": images };
    match db.run_command(create).await {
        Err(e) if errors::command_code(&e) == Some(errors::NAMESPACE_EXISTS) => {
            db.run_command(coll_mod).await.map(drop)
        }
        other => other.map(drop),
    }
}

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

/// The first day from which a rescan reaches each user's every stored
/// document: its earliest stored day (for a monthly summary, its month's
/// last day: a rescan from any day of a month rebuilds the month's
/// summary). Drift on one of its pockets may reach back that far. Users with
/// no document are absent. One grouped query per collection, on the
/// unique `(user_id, period)` index.
pub async fn first_stored_days(
    db: &Database,
    users: &[bson::oid::ObjectId],
) -> Result<HashMap<bson::oid::ObjectId, NaiveDate>> {
    use futures::TryStreamExt;
    let mut first: HashMap<bson::oid::ObjectId, NaiveDate> = HashMap::new();
    for kind in Kind::ALL {
        let field = format!("${}", kind.date_field());
        let pipeline = [
            doc! { "$match": { "user_id": { "$in": users } } },
            doc! { "$group": { "_id": "$user_id", "first": { "$min": field } } },
        ];
        let mut cursor = db
            .collection::<Document>(kind.collection())
            .aggregate(pipeline)
            .await
            .with_context(|| format!("finding users' first documents in {}", kind.collection()))?;
        while let Some(d) = cursor.try_next().await? {
            if let (Ok(user), Ok(at)) = (d.get_object_id("_id"), d.get_datetime("first")) {
                let mut day = crate::calendar::label_date(*at);
                if kind == Kind::Monthly {
                    // A rescan from any day of a month rebuilds its summary.
                    day = crate::calendar::last_of_month(day);
                }
                let e = first.entry(user).or_insert(day);
                *e = (*e).min(day);
            }
        }
    }
    Ok(first)
}

/// Decides the write that brings `stored` to `expected` content, with the
/// bookkeeping rules of SPEC §5; `None` when nothing changes.
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
/// revision, restatements, created_at and finalized_at follow SPEC §5.
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

/// What a batch of writes did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Writes not done because another writer got there first: guarded
    /// updates that found another revision (or no document), and inserts
    /// of documents believed new whose key was taken. The stored document
    /// is left as it is; the caller reads it again (rescans the user from
    /// the source) and retries.
    pub conflicts: u64,
    pub errors: u64,
    /// Time spent waiting for the server to take the writes.
    pub server_time: Duration,
}

impl WriteStats {
    /// Counts what the server's reply to a bulk command of `sent`
    /// statements of `op` says was done.
    fn count_reply(&mut self, op: Op, reply: &Document, sent: usize) {
        match op {
            Op::Insert => {
                self.inserted += count(reply);
                self.conflicts += failed_with(reply, errors::DUPLICATE_KEY).len() as u64;
            }
            Op::Update => {
                let matched = count(reply);
                self.updated += matched;
                self.conflicts += (sent as u64).saturating_sub(matched);
            }
            Op::Delete => self.deleted += count(reply),
        }
    }

    pub fn add(&mut self, o: WriteStats) {
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.deleted += o.deleted;
        self.conflicts += o.conflicts;
        self.errors += o.errors;
        self.server_time += o.server_time;
    }

    pub fn changed(&self) -> u64 {
        self.inserted + self.updated + self.deleted
    }
}

/// Most operations in one bulk command; also bounded by size below.
const BATCH_OPS: usize = 1000;
const BATCH_BYTES: usize = 8 << 20;

/// Executes writes as unordered bulk commands, per collection.
///
/// A new document (an upsert with no stored document to guard) is sent as
/// an `insert`, which servers take much faster than an upsert (SecantusDB:
/// about 3×). One whose key turns out to be taken (duplicate key: another
/// writer stored it since it was read) is not written: it counts as a
/// conflict, like a guarded update that finds another revision, and the
/// stored document stays as it is — it may be newer than this write. A
/// stored document is always replaced by a guarded update (by `_id` and
/// revision; see [`write_over`] for one without a revision). A guarded update replaces the whole
/// document (keeping `_id`): the written fields are all of its content and
/// bookkeeping, a replacement is cheaper for the server than a `$set` of
/// the same fields, and it drops fields no longer in the schema.
///
/// With a `fence` (the active instance of several), each bulk command runs
/// in a transaction behind the lease ([`lease::fenced`]): once another
/// instance holds the lease, the writes fail with [`lease::LostLease`] and
/// change nothing.
pub async fn execute(
    db: &Database,
    writes: Vec<Write>,
    fence: Option<&Fence>,
) -> Result<WriteStats> {
    execute_prepared(db, prepare(writes)?, fence).await
}

/// Writes encoded as bulk commands, ready to send: [`prepare`] does the
/// CPU work (building and encoding documents) so that a caller can do it
/// while the server is still busy with earlier commands, and
/// [`execute_prepared`] only sends.
#[derive(Debug, Default)]
pub struct Prepared {
    batches: Vec<Batch>,
}

impl Prepared {
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// One bulk command's operations, each already encoded.
#[derive(Debug)]
struct Batch {
    kind: Kind,
    op: Op,
    /// Insert: the documents; update and delete: the statements.
    items: Vec<RawDocumentBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Insert,
    /// Guarded updates.
    Update,
    Delete,
}

/// Encodes `writes` as bulk commands (see [`execute`] for their shape).
pub fn prepare(writes: Vec<Write>) -> Result<Prepared> {
    let mut per_kind: Vec<(Kind, Vec<Write>)> =
        Kind::ALL.iter().map(|k| (*k, Vec::new())).collect();
    for w in writes {
        if let Some((_, v)) = per_kind.iter_mut().find(|(k, _)| *k == w.kind()) {
            v.push(w);
        }
    }
    let mut out = Prepared::default();
    for (kind, writes) in per_kind {
        let (mut inserts, mut guarded, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
        for w in writes {
            match w {
                Write::Upsert {
                    filter,
                    set,
                    if_revision: None,
                    ..
                } => {
                    let d = RawDocumentBuf::from_document(&whole(&filter, set))?;
                    inserts.push((d, ()));
                }
                Write::Upsert {
                    filter,
                    set,
                    if_revision: Some(r),
                    ..
                } => {
                    let mut q = match set.get("_id") {
                        Some(id) => doc! { "_id": id.clone() },
                        None => filter.clone(),
                    };
                    q.insert("revision", revision_guard(r));
                    let u = whole(&filter, set);
                    guarded.push((RawDocumentBuf::from_document(&doc! { "q": q, "u": u })?, ()));
                }
                Write::Delete { filter, .. } => {
                    let stmt = doc! { "q": filter, "limit": 1 };
                    deletes.push((RawDocumentBuf::from_document(&stmt)?, ()));
                }
            }
        }
        for (op, items) in [
            (Op::Insert, inserts),
            (Op::Update, guarded),
            (Op::Delete, deletes),
        ] {
            for chunk in chunks(items) {
                let items = chunk.into_iter().map(|(item, ())| item).collect();
                out.batches.push(Batch { kind, op, items });
            }
        }
    }
    Ok(out)
}

/// Sends commands made by [`prepare`], in order (fenced: see [`execute`]).
pub async fn execute_prepared(
    db: &Database,
    prepared: Prepared,
    fence: Option<&Fence>,
) -> Result<WriteStats> {
    if let Some(fence) = fence {
        return execute_fenced(db, prepared, fence).await;
    }
    let mut stats = WriteStats::default();
    for batch in prepared.batches {
        let coll = batch.kind.collection();
        let reply = run_batch(db, &mut stats, coll, batch.op, &batch.items).await?;
        stats.count_reply(batch.op, &reply, batch.items.len());
    }
    Ok(stats)
}

/// The guard of a replacement computed from a stored document of revision
/// `r`: that revision, or for 0 (a stored document without one, written
/// by something other than tally) a missing or null revision.
fn revision_guard(r: i64) -> Bson {
    if r == 0 {
        Bson::Document(doc! { "$in": [Bson::Null, 0_i64] })
    } else {
        Bson::Int64(r)
    }
}

/// Sends one bulk command of already encoded operations.
async fn run_batch(
    db: &Database,
    stats: &mut WriteStats,
    coll: &str,
    op: Op,
    items: &[RawDocumentBuf],
) -> Result<Document> {
    let (cmd, expected) = bulk_command(coll, op, items);
    run_bulk(db, stats, cmd, expected, None).await
}

/// The bulk command of `items`, and the write error code its caller
/// handles itself.
fn bulk_command(coll: &str, op: Op, items: &[RawDocumentBuf]) -> (RawDocumentBuf, Option<i32>) {
    let (name, key, expected) = match op {
        Op::Insert => ("insert", "documents", Some(errors::DUPLICATE_KEY)),
        Op::Update => ("update", "updates", None),
        Op::Delete => ("delete", "deletes", None),
    };
    let mut array = RawArrayBuf::new();
    for item in items {
        array.push(item.clone());
    }
    let mut cmd = RawDocumentBuf::new();
    cmd.append(name, coll);
    cmd.append(key, array);
    cmd.append("ordered", false);
    (cmd, expected)
}

/// A duplicate key inside a transaction (which the server then aborts):
/// the indexes, in the command, of the inserts that met one.
#[derive(Debug)]
struct DuplicateInTransaction(Vec<usize>);

impl std::fmt::Display for DuplicateInTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "duplicate key in a fenced insert ({} documents)",
            self.0.len()
        )
    }
}

impl std::error::Error for DuplicateInTransaction {}

/// [`execute_prepared`] behind the lease: one transaction per bulk command,
/// which bounds a transaction's size and time. Any write error aborts a
/// transaction, so an insert batch that meets a duplicate key is sent
/// again without the duplicates (counted as conflicts, never written) until
/// the rest goes in; another write error fails the whole call (the caller
/// keeps its work queued).
async fn execute_fenced(db: &Database, prepared: Prepared, fence: &Fence) -> Result<WriteStats> {
    let mut stats = WriteStats::default();
    for batch in prepared.batches {
        let coll = batch.kind.collection();
        let (op, mut items) = (batch.op, batch.items);
        loop {
            match fenced_batch(db, fence, coll, op, &items).await {
                Ok((reply, s)) => {
                    stats.add(s);
                    stats.count_reply(op, &reply, items.len());
                    break;
                }
                Err(e) if op == Op::Insert && e.is::<DuplicateInTransaction>() => {
                    let Some(DuplicateInTransaction(taken)) = e.downcast_ref() else {
                        unreachable!("checked above")
                    };
                    let before = items.len();
                    items = without(items, taken);
                    stats.conflicts += (before - items.len()) as u64;
                    if items.len() == before {
                        anyhow::bail!(
                            "a fenced insert into {coll} met a duplicate key it cannot locate"
                        );
                    }
                    if items.is_empty() {
                        break;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(stats)
}

/// `items` without those at the indexes `drop`.
fn without(items: Vec<RawDocumentBuf>, drop: &[usize]) -> Vec<RawDocumentBuf> {
    items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !drop.contains(i))
        .map(|(_, item)| item)
        .collect()
}

/// One bulk command in a fenced transaction.
async fn fenced_batch(
    db: &Database,
    fence: &Fence,
    coll: &str,
    op: Op,
    items: &[RawDocumentBuf],
) -> Result<(Document, WriteStats)> {
    let (cmd, expected) = bulk_command(coll, op, items);
    lease::fenced(db, fence, |s| {
        let (db, cmd, coll) = (db.clone(), cmd.clone(), coll.to_owned());
        Box::pin(async move {
            let mut stats = WriteStats::default();
            let reply = run_bulk(&db, &mut stats, cmd, expected, Some(s)).await?;
            let taken = failed_with(&reply, errors::DUPLICATE_KEY);
            if !taken.is_empty() {
                return Err(DuplicateInTransaction(taken).into());
            }
            if stats.errors > 0 {
                anyhow::bail!("a fenced bulk write to {coll} had write errors");
            }
            Ok((reply, stats))
        })
    })
    .await
}

/// The whole document a write leaves: `set`, with any key field it lacks.
fn whole(filter: &Document, mut set: Document) -> Document {
    for (k, v) in filter {
        if !set.contains_key(k) {
            set.insert(k.clone(), v.clone());
        }
    }
    set
}

/// Indexes (in the command) of the operations that failed with `code`.
fn failed_with(reply: &Document, code: i32) -> Vec<usize> {
    let Ok(errors) = reply.get_array("writeErrors") else {
        return Vec::new();
    };
    errors
        .iter()
        .filter_map(|e| match e {
            Bson::Document(e) if int(e.get("code")) == Some(i64::from(code)) => {
                int(e.get("index")).and_then(|i| usize::try_from(i).ok())
            }
            _ => None,
        })
        .collect()
}

fn count(reply: &Document) -> u64 {
    int(reply.get("n")).unwrap_or(0).max(0) as u64
}

/// Splits encoded operations into bulk commands of at most [`BATCH_OPS`]
/// operations and about [`BATCH_BYTES`] bytes.
fn chunks<T>(ops: Vec<(RawDocumentBuf, T)>) -> Vec<Vec<(RawDocumentBuf, T)>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let size = op.0.as_bytes().len();
        if !cur.is_empty() && (cur.len() >= BATCH_OPS || bytes + size > BATCH_BYTES) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += size;
        cur.push(op);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Runs one bulk command; write errors other than `expected` (which the
/// caller handles) are counted and logged.
async fn run_bulk(
    db: &Database,
    stats: &mut WriteStats,
    cmd: RawDocumentBuf,
    expected: Option<i32>,
    session: Option<&mut ClientSession>,
) -> Result<Document> {
    let started = Instant::now();
    let reply = match session {
        Some(s) => db.run_raw_command(cmd).session(s).await,
        None => db.run_raw_command(cmd).await,
    }
    .context("bulk write to the output collections")?;
    stats.server_time += started.elapsed();
    if let Ok(errors) = reply.get_array("writeErrors") {
        let unexpected: Vec<&Bson> = errors
            .iter()
            .filter(|e| {
                expected.is_none()
                    || !matches!(e, Bson::Document(d) if int(d.get("code")) == expected.map(i64::from))
            })
            .collect();
        stats.errors += unexpected.len() as u64;
        if let Some(Bson::Document(first)) = unexpected.first() {
            tracing::warn!(errors = unexpected.len(), first = %first, "Bulk write had errors.");
        }
    }
    Ok(reply)
}

/// Write errors in the reply of a bulk command: the command succeeded
/// (`ok: 1`), yet some of its statements did not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteErrors {
    /// How many statements failed.
    pub count: usize,
    /// The first failure's server code and message.
    pub code: Option<i64>,
    pub message: String,
}

impl std::fmt::Display for WriteErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self
            .code
            .map_or("no code".to_owned(), |c| format!("code {c}"));
        write!(
            f,
            "{} write error(s), the first {code}: {}",
            self.count, self.message
        )
    }
}

impl std::error::Error for WriteErrors {}

/// Fails with [`WriteErrors`] when a bulk command's reply lists any.
pub fn check_write_errors(reply: &Document) -> Result<(), WriteErrors> {
    let errors = match reply.get_array("writeErrors") {
        Ok(errors) if !errors.is_empty() => errors,
        _ => return Ok(()),
    };
    let first = errors.first().and_then(Bson::as_document);
    Err(WriteErrors {
        count: errors.len(),
        code: first.and_then(|d| int(d.get("code"))),
        message: first
            .and_then(|d| d.get_str("errmsg").ok())
            .unwrap_or_default()
            .to_owned(),
    })
}

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
                    TRANSACTIONS => crate::source::decode_transaction(&d).is_err(),
                    _ => crate::source::decode_pocket(&d)
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

#[cfg(test)]
mod tests {
    use super::*;
    use bson::oid::ObjectId;

    #[test]
    fn credentials_never_survive_redaction() {
        assert_eq!(
            redact_uri("mongodb://alice:s3cret@db:27017/coin"),
            "mongodb://***@db:27017/coin"
        );
        assert_eq!(
            redact_uri("mongodb+srv://a:b@x.example/?w=1"),
            "mongodb+srv://***@x.example/?w=1"
        );
        assert_eq!(
            redact_uri("mongodb://127.0.0.1:27017"),
            "mongodb://127.0.0.1:27017"
        );
    }

    #[test]
    fn write_errors_in_a_bulk_reply_fail_with_the_first_code_and_message() {
        assert_eq!(check_write_errors(&doc! { "n": 2, "ok": 1.0 }), Ok(()));
        assert_eq!(
            check_write_errors(&doc! { "n": 2, "writeErrors": [], "ok": 1.0 }),
            Ok(())
        );
        let reply = doc! {
            "n": 1, "ok": 1.0,
            "writeErrors": [
                { "index": 1, "code": 121, "errmsg": "Document failed validation" },
                { "index": 2, "code": 11000, "errmsg": "E11000" },
            ],
        };
        let e = check_write_errors(&reply).unwrap_err();
        assert_eq!(
            e,
            WriteErrors {
                count: 2,
                code: Some(121),
                message: "Document failed validation".to_owned()
            }
        );
        let text = format!(
            "{:#}",
            anyhow::Error::from(e).context("recording rejected source documents")
        );
        assert_eq!(
            text,
            "recording rejected source documents: 2 write error(s), the first code 121: \
             Document failed validation"
        );
    }

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

    /// The statements of the one batch `prepare` makes of `w`.
    fn prepared(w: Write) -> (Op, Vec<Document>) {
        let p = prepare(vec![w]).unwrap();
        assert_eq!(p.batches.len(), 1);
        let b = &p.batches[0];
        let items = b.items.iter().map(|i| i.to_document().unwrap()).collect();
        (b.op, items)
    }

    #[test]
    fn a_stored_document_is_only_ever_replaced_under_its_guard() {
        let user = ObjectId::new();
        let day: NaiveDate = "2026-01-05".parse().unwrap();
        let filter = key_filter(Kind::Report, user, day);
        let content = doc! { "user_id": user, "report_date": date_label(day), "total_income": 5, "is_final": false };
        let t = now("2026-01-05T12:00:00Z");

        // New: an insert under a fresh _id, never an upsert.
        let new = write_over(
            Kind::Report,
            filter.clone(),
            content.clone(),
            None,
            t,
            "UTC",
        );
        let (op, items) = prepared(new);
        assert_eq!(op, Op::Insert);
        assert!(items[0].get_object_id("_id").is_ok());

        // Stored without a revision (another writer's document): replaced
        // by its _id, guarded by the missing revision; revision 1 after.
        let id = ObjectId::new();
        let foreign =
            doc! { "_id": id, "user_id": user, "report_date": date_label(day), "total_income": 4 };
        let w = write_over(
            Kind::Report,
            filter.clone(),
            content.clone(),
            Some(&foreign),
            t,
            "UTC",
        );
        let Write::Upsert {
            if_revision: Some(0),
            ref set,
            ..
        } = w
        else {
            panic!("a stored document is a guarded replacement: {w:?}");
        };
        assert_eq!(set.get_i64("revision").unwrap(), 1);
        let (op, items) = prepared(w);
        assert_eq!(op, Op::Update);
        assert_eq!(
            items[0].get_document("q").unwrap(),
            &doc! { "_id": id, "revision": { "$in": [Bson::Null, 0_i64] } }
        );
        assert!(items[0].get("upsert").is_none(), "never an upsert");

        // A stored revision guards by that revision.
        let mut ours = foreign.clone();
        ours.insert("revision", 3_i64);
        let (_, items) = prepared(write_over(
            Kind::Report,
            filter.clone(),
            content.clone(),
            Some(&ours),
            t,
            "UTC",
        ));
        assert_eq!(
            items[0].get_document("q").unwrap(),
            &doc! { "_id": id, "revision": 3_i64 }
        );

        // An _id that is not an ObjectId: found by its key, and kept.
        let mut odd = foreign.clone();
        odd.insert("_id", "legacy-1");
        let (op, items) = prepared(write_over(
            Kind::Report,
            filter.clone(),
            content,
            Some(&odd),
            t,
            "UTC",
        ));
        assert_eq!(op, Op::Update);
        let mut q = filter;
        q.insert("revision", doc! { "$in": [Bson::Null, 0_i64] });
        assert_eq!(items[0].get_document("q").unwrap(), &q);
        assert!(items[0].get_document("u").unwrap().get("_id").is_none());
    }

    #[test]
    fn an_insert_that_meets_a_taken_key_is_a_conflict_not_a_write() {
        let reply = doc! {
            "n": 1, "ok": 1.0,
            "writeErrors": [
                { "index": 0, "code": 11000, "errmsg": "E11000 duplicate key" },
                { "index": 2, "code": 11000, "errmsg": "E11000 duplicate key" },
            ],
        };
        let mut stats = WriteStats::default();
        stats.count_reply(Op::Insert, &reply, 3);
        assert_eq!(
            (stats.inserted, stats.updated, stats.conflicts, stats.errors),
            (1, 0, 2, 0)
        );
        let docs = |n: u8| {
            (0..n)
                .map(|i| RawDocumentBuf::from_document(&doc! { "i": i as i32 }).unwrap())
                .collect::<Vec<_>>()
        };
        let left = without(docs(4), &[1, 3]);
        let left: Vec<i32> = left
            .iter()
            .map(|d| d.to_document().unwrap().get_i32("i").unwrap())
            .collect();
        assert_eq!(left, vec![0, 2]);
    }
}
