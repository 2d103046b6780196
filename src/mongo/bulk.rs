//! Execution of planned writes: unordered bulk `insert`/`update`/`delete`
//! commands per collection, so any server speaking the wire protocol takes
//! them; guarded replacements, conflicts counted, and fenced execution
//! inside the lease's transaction.

use std::time::{Duration, Instant};

use crate::error::{Context, Result};
use bson::{doc, Bson, Document, RawArrayBuf, RawDocumentBuf};
use mongodb::{ClientSession, Database};

use crate::core::reports::Kind;
use crate::mongo::errors;
use crate::mongo::lease::{self, Fence};
use crate::plan::write::{int, key_filter, Write};

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
pub(crate) const BATCH_OPS: usize = 1000;
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
/// revision; see [`write_over`](crate::plan::write::write_over) for one without a revision). A guarded update replaces the whole
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
    execute_prepared(db, prepare(writes, fence.is_some())?, fence).await
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

/// One bulk command, encoded once: sent as is, and taken apart again only
/// when a fenced insert must be resent without the keys it found taken.
#[derive(Debug)]
struct Batch {
    kind: Kind,
    op: Op,
    cmd: RawDocumentBuf,
    /// Operations in `cmd`.
    len: usize,
}

impl Batch {
    fn new(kind: Kind, op: Op, items: &[RawDocumentBuf]) -> Batch {
        let cmd = bulk_command(kind.collection(), op, items);
        Batch {
            kind,
            op,
            cmd,
            len: items.len(),
        }
    }

    /// Insert: the documents; update and delete: the statements.
    fn items(&self) -> Result<Vec<RawDocumentBuf>> {
        let mut out = Vec::with_capacity(self.len);
        for item in self.cmd.get_array(self.op.items_key())? {
            let Some(item) = item?.as_document() else {
                crate::bail!("a bulk command item that is not a document");
            };
            out.push(item.to_raw_document_buf());
        }
        Ok(out)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Insert,
    /// Guarded updates.
    Update,
    Delete,
}

impl Op {
    /// The command's name.
    fn name(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }

    /// The field of the command that lists its operations.
    fn items_key(self) -> &'static str {
        match self {
            Op::Insert => "documents",
            Op::Update => "updates",
            Op::Delete => "deletes",
        }
    }

    /// The write error code the caller handles itself: an insert's taken
    /// key is a conflict, not an error.
    fn expected(self) -> Option<i32> {
        (self == Op::Insert).then_some(errors::DUPLICATE_KEY)
    }
}

/// Encodes `writes` as bulk commands (see [`execute`] for their shape),
/// of [`FENCED_BATCH_OPS`] operations at most when they are to be sent
/// `fenced`.
pub fn prepare(writes: Vec<Write>, fenced: bool) -> Result<Prepared> {
    let max_ops = if fenced { FENCED_BATCH_OPS } else { BATCH_OPS };
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
                    set,
                    if_revision: None,
                    ..
                } => inserts.push((set, ())),
                Write::Upsert {
                    kind,
                    user,
                    period,
                    set,
                    if_revision: Some(r),
                    ..
                } => {
                    let mut q = match set.get_object_id("_id") {
                        Ok(id) => doc! { "_id": id },
                        Err(_) => key_filter(kind, user, period),
                    };
                    q.insert("revision", revision_guard(r));
                    let mut stmt = RawDocumentBuf::new();
                    stmt.append("q", RawDocumentBuf::from_document(&q)?);
                    stmt.append("u", set);
                    guarded.push((stmt, ()));
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
            for chunk in chunks(items, max_ops) {
                let items: Vec<RawDocumentBuf> = chunk.into_iter().map(|(item, ())| item).collect();
                out.batches.push(Batch::new(kind, op, &items));
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
        let reply = run_bulk(db, &mut stats, batch.cmd, batch.op.expected(), None).await?;
        stats.count_reply(batch.op, &reply, batch.len);
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

/// The unordered bulk command of `items`.
fn bulk_command(coll: &str, op: Op, items: &[RawDocumentBuf]) -> RawDocumentBuf {
    let mut array = RawArrayBuf::new();
    for item in items {
        array.push(item.clone());
    }
    let mut cmd = RawDocumentBuf::new();
    cmd.append(op.name(), coll);
    cmd.append(op.items_key(), array);
    cmd.append("ordered", false);
    cmd
}

/// A duplicate key inside a transaction (which the server then aborts):
/// the batch (in the transaction) and the indexes, in its command, of the
/// inserts that met one.
#[derive(Debug)]
struct DuplicateInTransaction {
    batch: usize,
    taken: Vec<usize>,
}

impl std::fmt::Display for DuplicateInTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "duplicate key in a fenced insert ({} documents)",
            self.taken.len()
        )
    }
}

impl std::error::Error for DuplicateInTransaction {}

impl From<DuplicateInTransaction> for crate::Error {
    fn from(d: DuplicateInTransaction) -> crate::Error {
        crate::Error::from_source(crate::Kind::DuplicateKey, d)
    }
}

/// Most operations in one fenced transaction: a flush's writes go in one,
/// a large recomputation in several, which bounds a transaction's size.
const TRANSACTION_OPS: usize = 5 * BATCH_OPS;

/// Most operations in one bulk command inside a fenced transaction. The
/// transaction's time budget is checked between commands, so a command is
/// what it can overrun by: a quarter of [`BATCH_OPS`] keeps that to about
/// half a second on SecantusDB under load (~1.8 ms a replacement) at a few
/// more round trips.
const FENCED_BATCH_OPS: usize = BATCH_OPS / 4;

/// [`execute_prepared`] behind the lease: the bulk commands in as few
/// transactions as [`TRANSACTION_OPS`] and the fence's time budget allow
/// (one for a flush under load: the lease check and the commit are paid
/// once, not per command). A transaction stops taking commands once it has
/// run for [`Fence::transaction_budget`] (it always takes one), so the
/// holder's renewals never wait long behind its own writes. Any write error
/// aborts a transaction, so one whose inserts meet a duplicate key is sent
/// again without the duplicates (counted as conflicts, never written) until
/// the rest goes in; another write error fails the whole call (the caller
/// keeps its work queued; what committed before is a recomputation the
/// retry writes again or finds equal).
async fn execute_fenced(db: &Database, prepared: Prepared, fence: &Fence) -> Result<WriteStats> {
    let mut stats = WriteStats::default();
    let mut batches = prepared.batches;
    while !batches.is_empty() {
        match fenced_group(db, fence, &batches).await {
            Ok((s, done)) => {
                stats.add(s);
                batches.drain(..done);
            }
            Err(e) if e.find::<DuplicateInTransaction>().is_some() => {
                let Some(DuplicateInTransaction { batch, taken }) = e.find() else {
                    unreachable!("checked above")
                };
                let b = &mut batches[*batch];
                let before = b.len;
                *b = Batch::new(b.kind, b.op, &without(b.items()?, taken));
                stats.conflicts += (before - b.len) as u64;
                if b.len == before {
                    crate::bail!(
                        "a fenced insert into {} met a duplicate key it cannot locate",
                        b.kind.collection()
                    );
                }
                batches.retain(|b| b.len > 0);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(stats)
}

/// How many of `batches`, from the first, one transaction may take: at
/// most [`TRANSACTION_OPS`] operations (a larger batch alone).
fn group_len(batches: &[Batch]) -> usize {
    let mut ops = 0;
    batches
        .iter()
        .take_while(|b| {
            ops += b.len;
            ops <= TRANSACTION_OPS
        })
        .count()
        .max(1)
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

/// The first bulk commands of `batches` in one fenced transaction: as
/// many as [`group_len`] allows, ending early once the transaction has run
/// for the fence's budget. Returns what was written and how many batches
/// went in.
async fn fenced_group(
    db: &Database,
    fence: &Fence,
    batches: &[Batch],
) -> Result<(WriteStats, usize)> {
    let commands: Vec<(RawDocumentBuf, Op, usize, &'static str)> = batches[..group_len(batches)]
        .iter()
        .map(|b| (b.cmd.clone(), b.op, b.len, b.kind.collection()))
        .collect();
    let budget = fence.transaction_budget();
    lease::fenced(db, fence, |s| {
        let (db, commands) = (db.clone(), commands.clone());
        Box::pin(async move {
            let began = Instant::now();
            let mut stats = WriteStats::default();
            let total = commands.len();
            for (i, (cmd, op, sent, coll)) in commands.into_iter().enumerate() {
                let reply = run_bulk(&db, &mut stats, cmd, op.expected(), Some(&mut *s)).await?;
                let taken = failed_with(&reply, errors::DUPLICATE_KEY);
                if !taken.is_empty() {
                    return Err(DuplicateInTransaction { batch: i, taken }.into());
                }
                if stats.errors > 0 {
                    crate::bail!("a fenced bulk write to {coll} had write errors");
                }
                stats.count_reply(op, &reply, sent);
                if i + 1 < total && began.elapsed() >= budget {
                    return Ok((stats, i + 1));
                }
            }
            Ok((stats, total))
        })
    })
    .await
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

/// Splits encoded operations into bulk commands of at most `max_ops`
/// operations and about [`BATCH_BYTES`] bytes.
fn chunks<T>(ops: Vec<(RawDocumentBuf, T)>, max_ops: usize) -> Vec<Vec<(RawDocumentBuf, T)>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let size = op.0.as_bytes().len();
        if !cur.is_empty() && (cur.len() >= max_ops || bytes + size > BATCH_BYTES) {
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

impl From<WriteErrors> for crate::Error {
    fn from(w: WriteErrors) -> crate::Error {
        let kind = match w.code {
            Some(c) if c == i64::from(errors::DUPLICATE_KEY) => crate::Kind::DuplicateKey,
            _ => crate::Kind::Fatal,
        };
        crate::Error::from_source(kind, w)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::calendar::date_label;
    use crate::plan::write::{key_filter, write_over, Prior};
    use bson::oid::ObjectId;
    use chrono::{DateTime, NaiveDate, Utc};

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
            crate::error::Error::from(e).context("recording rejected source documents")
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

    /// The statements of the one batch `prepare` makes of `w`.
    fn prepared(w: Write) -> (Op, Vec<Document>) {
        let p = prepare(vec![w], false).unwrap();
        assert_eq!(p.batches.len(), 1);
        let b = &p.batches[0];
        let items = b
            .items()
            .unwrap()
            .iter()
            .map(|i| i.to_document().unwrap())
            .collect();
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
        let new = write_over(Kind::Report, user, day, content.clone(), None, t, "UTC");
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
            user,
            day,
            content.clone(),
            Some(&Prior::of(Kind::Report, &foreign)),
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
            user,
            day,
            content.clone(),
            Some(&Prior::of(Kind::Report, &ours)),
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
            user,
            day,
            content,
            Some(&Prior::of(Kind::Report, &odd)),
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
