//! The live path of `tally run` without any server (issue 13, target 3 and
//! part of 4): raw change events replayed through the in-memory window
//! exactly as `src/service/tailer.rs` (`handle`, `flush_dirty`,
//! `hold_past_changes`, `write`, `settle_rejects`) does, minus the I/O.
//!
//! - **World**: 10,000 users (`TALLY_BENCH_USERS`), 1–3 pockets each, 10
//!   categories, 55 transactions per user dated over the 60 days of the
//!   window (1 June to 30 July 2026, `America/New_York`), 3% soft-deleted,
//!   in the shapes contract §1.1 accepts (Decimal128, double and string
//!   amounts; legacy type and pocket field names).
//! - **Seeding**: each user's scan result (`Kept`) is inserted into a
//!   `Live` (window from 1 June, tally managing since 1 January), then its
//!   documents are computed with `Live::compute` and the writes recorded with
//!   `Live::record`: the fingerprints are those of what would be stored.
//! - **Stream**: the coin API's pattern, calls arriving at random
//!   (`TALLY_BENCH_LIVE_RATE` calls per second of stream time, 2,500): a
//!   transaction insert on `coin.transactions`, then 2–10 ms later an update
//!   on `coin.pockets` per pocket whose balance moved, with the pocket's
//!   full document (`updateLookup`) holding the new balance. 10% of new
//!   transactions are back-dated by 1–3 days; 3% of calls edit an existing
//!   transaction (amount, or date moved by a day) and 1% soft-delete one,
//!   each with its balance updates. No pre-images (the brief's shape). Events
//!   are BSON bytes as the server sends them (`RawDocumentBuf`), recorded in
//!   memory before the replay; calls of different users overlap, so a flush
//!   boundary can fall between a transaction and its balance write.
//! - **Replay**: `Event::from_raw` → `decode_transaction` / `decode_pocket`
//!   → `Live::set_transaction` / `Live::set_pocket` → the user marked dirty
//!   as `Tailer::mark` does (earliest day; a change of a pocket's balance
//!   alone marks today, and the flush widens to the whole open window when
//!   the user's anchors moved, or only to the user's floor while it has one:
//!   `Tailer::past_waits`), and every `TALLY_BENCH_LIVE_FLUSH_EVENTS` (500)
//!   events a flush: `Live::compute` of every dirty user from its day to
//!   today + 400 days, the changes split as `hold_past_changes` does (past
//!   changes held, the user made pending), the writes recorded
//!   (`Live::record`, what `Tailer::write` does before sending them) and
//!   the reject verdicts settled. The clock is the stream's: `now` is the
//!   last event's `wallTime` (the settle delay, 20 s, runs on it).
//!   Skipped, because they need the server: sending the writes, the
//!   reject records, locating old versions (none needed here), rescans from
//!   the source (none queued here), `recheck_pending`'s deep rescans, the
//!   checkpoint, telemetry.
//!
//! Printed: events/s of the whole path over one full replay of the
//! recorded stream (`TALLY_BENCH_LIVE_EVENTS`, 60,000 events), the
//! percentiles of one flush's build (the `compute` of its dirty users) and
//! of the whole flush, each flush timed on its own; the bytes of the
//! documents written, and how many computations start at today against
//! those reaching back (a back-dated or edited transaction); where a user's build
//! goes (`UserView`, each kind, fingerprints); and the heap `Live` holds
//! after seeding, counted by a `#[global_allocator]` wrapper: in all, per
//! user, per held transaction and per stored fingerprint (by differencing
//! windows seeded without transactions and without fingerprints), with
//! the structures behind them. Then criterion: `live/path_per_flush` (the
//! events of one flush and the flush, continuing the stream) and
//! `live_flush/build` (the build alone). `@row 9 | …` lines are for
//! `scripts/bench`'s table.
//!
//! Times are the CPU time of the bench thread (`CLOCK_THREAD_CPUTIME_ID`),
//! as in `benches/ledger.rs`; `TALLY_BENCH_CLOCK=wall` measures wall-clock
//! time. The counting allocator stays in the timed path (it cost about 5%
//! of the replay's events/s when measured against a build without it).
//! Run: `cargo bench --bench live`. Under `cargo test` it runs a tiny
//! world once as a smoke test.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use bson::{doc, Bson, DateTime as BsonDateTime, Document, RawDocument, RawDocumentBuf};
use chrono::{DateTime, Days, NaiveDate, Utc};
use criterion::measurement::{Measurement, WallTime};
use criterion::{Criterion, SamplingMode, Throughput};
use mongodb::change_stream::event::OperationType;
use tally::batch::scan::{reject_key, Kept};
use tally::core::calendar::{first_of_month, Calendar};
use tally::core::ledger::{UserLedger, YtdBaseline};
use tally::core::money::Money;
use tally::core::reports::{Categories, Kind, UserView};
use tally::core::rng::Rng;
use tally::core::source::{
    decode_pocket, decode_transaction, RejectReason, SourceId, Transaction, TxType,
};
use tally::core::vecmap::Sorted;
use tally::mongo::{POCKETS, TRANSACTIONS};
use tally::plan::compare::DocChange;
use tally::plan::fingerprint::{fingerprint, Metas, StoredMeta};
use tally::plan::write::Write;
use tally::service::held::{Held, Refs, Slot, TxOwners};
use tally::service::live::{split_at_floor, Live, PocketChange};
use tally::service::Event;

/// Section of `scripts/bench`'s table.
const LIVE: u8 = 9;
const TX_PER_USER: usize = 55;
const SEED: u64 = 13;
/// `RunOptions::new`: settle delay and horizon of `tally run`.
const SETTLE_SECONDS: i64 = 20;
const HORIZON_DAYS: u64 = 400;
const DAY_MS: i64 = 86_400_000;

// ---------------------------------------------------------------------
// Heap accounting

/// The system allocator, counting what is live: bytes asked for, blocks,
/// and the bytes glibc's malloc takes for them (a chunk: the size plus an
/// 8-byte header, rounded up to 16, at least 32; mmapped blocks aside).
/// Counting stops once the heap has been measured (`memory`): the timed
/// phases run on the bare allocator, as the binary does, not on three
/// atomic additions per call.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(true);

static BYTES: AtomicUsize = AtomicUsize::new(0);
static CHUNKS: AtomicUsize = AtomicUsize::new(0);
static BLOCKS: AtomicUsize = AtomicUsize::new(0);

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn chunk(size: usize) -> usize {
    ((size + 8 + 15) & !15).max(32)
}

fn count_alloc(size: usize) {
    if !COUNTING.load(Relaxed) {
        return;
    }
    BYTES.fetch_add(size, Relaxed);
    CHUNKS.fetch_add(chunk(size), Relaxed);
    BLOCKS.fetch_add(1, Relaxed);
}

fn count_free(size: usize) {
    if !COUNTING.load(Relaxed) {
        return;
    }
    BYTES.fetch_sub(size, Relaxed);
    CHUNKS.fetch_sub(chunk(size), Relaxed);
    BLOCKS.fetch_sub(1, Relaxed);
}

// SAFETY: every call is forwarded to `System` with the caller's arguments;
// the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count_alloc(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count_alloc(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every
        // allocation goes through this wrapper).
        unsafe { System.dealloc(ptr, layout) };
        count_free(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `dealloc`; `new_size` is the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count_free(layout.size());
            count_alloc(new_size);
        }
        p
    }
}

/// Live heap at one instant, or the difference of two.
#[derive(Clone, Copy, Debug, Default)]
struct Heap {
    bytes: i64,
    chunks: i64,
    blocks: i64,
}

fn heap() -> Heap {
    Heap {
        bytes: BYTES.load(Relaxed) as i64,
        chunks: CHUNKS.load(Relaxed) as i64,
        blocks: BLOCKS.load(Relaxed) as i64,
    }
}

impl std::ops::Sub for Heap {
    type Output = Heap;
    fn sub(self, o: Heap) -> Heap {
        Heap {
            bytes: self.bytes - o.bytes,
            chunks: self.chunks - o.chunks,
            blocks: self.blocks - o.blocks,
        }
    }
}

/// `f`'s result and the heap it still holds.
fn held<T>(f: impl FnOnce() -> T) -> (T, Heap) {
    let before = heap();
    let out = f();
    (out, heap() - before)
}

// ---------------------------------------------------------------------
// Clocks

use common::cpu::{cpu_clock, wall_clock, ThreadCpuTime};

// ---------------------------------------------------------------------
// The world: users, pockets, seeded transactions

/// A deterministic ObjectId: 4 bytes of a tag, 8 of a counter.
fn oid(tag: u32, n: u64) -> ObjectId {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&tag.to_be_bytes());
    b[4..].copy_from_slice(&n.to_be_bytes());
    ObjectId::from_bytes(b)
}

fn cents(c: i64) -> Money {
    Money::new(rust_decimal::Decimal::new(c, 2))
}

struct PocketSeed {
    id: ObjectId,
    name: String,
    kind: &'static str,
    created: i64,
    /// The stored balance when the window is loaded.
    balance: Money,
}

struct UserSeed {
    id: ObjectId,
    pockets: Vec<PocketSeed>,
    baseline: YtdBaseline,
}

struct World {
    cal: Calendar,
    /// First day of the window (a 1st of month) and of the open days.
    from: NaiveDate,
    managed_from: NaiveDate,
    today: NaiveDate,
    /// The stream starts at 10:00 today (local).
    start_ms: i64,
    categories: Vec<ObjectId>,
    users: Vec<UserSeed>,
}

impl World {
    fn new(users: usize) -> World {
        let cal = Calendar::from_name("America/New_York").expect("zone");
        let today: NaiveDate = "2026-07-30".parse().expect("date");
        let from = first_of_month(first_of_month(today).pred_opt().expect("day"));
        let start_ms = cal.day_start(today).timestamp_millis() + 10 * 3_600_000;
        let from_ms = cal.day_start(from).timestamp_millis();
        let mut rng = Rng::new(SEED);
        let kinds = ["main", "saving", "allocation"];
        let users = (0..users as u64)
            .map(|u| {
                let n = 1 + rng.below(3) as usize;
                let pockets = (0..n)
                    .map(|i| PocketSeed {
                        id: oid(0x90C7, u * 8 + i as u64),
                        name: format!("{} {u}", kinds[i]),
                        kind: kinds[i],
                        created: from_ms - 90 * DAY_MS,
                        balance: cents(10_000 + rng.below(1_000_000) as i64),
                    })
                    .collect();
                UserSeed {
                    id: oid(0x05E4, u),
                    pockets,
                    baseline: YtdBaseline {
                        from,
                        income: cents(rng.below(5_000_000) as i64),
                        expense: cents(rng.below(5_000_000) as i64),
                    },
                }
            })
            .collect();
        World {
            cal,
            from,
            managed_from: "2026-01-01".parse().expect("date"),
            today,
            start_ms,
            categories: (0..10).map(|i| oid(0xCA7E, i)).collect(),
            users,
        }
    }

    fn window_start_ms(&self) -> i64 {
        self.cal.day_start(self.from).timestamp_millis()
    }

    fn category_labels(&self) -> Categories {
        Categories(
            self.categories
                .iter()
                .enumerate()
                .map(|(i, id)| (*id, format!("category {i}")))
                .collect(),
        )
    }

    /// A transaction document as the API writes it, in one of the shapes
    /// contract §1.1 accepts.
    fn tx_doc(&self, rng: &mut Rng, u: usize, id: ObjectId, date: i64, written: i64) -> Document {
        let pockets = &self.users[u].pockets;
        let mut kind = match rng.below(100) {
            0..=29 => "income",
            30..=74 => "expense",
            75..=89 => "transfer",
            90..=94 => "dp",
            _ => "withdraw",
        };
        if kind == "transfer" && pockets.len() < 2 {
            kind = "expense";
        }
        let amount = cents(100 + rng.below(50_000) as i64);
        let encoded = match rng.below(10) {
            0..=5 => amount.to_bson(),
            6..=8 => Bson::Double(amount.to_string().parse().expect("f64")),
            _ => Bson::String(format!(" {amount} ")),
        };
        let legacy_type = rng.chance(5);
        let shown_kind = if legacy_type {
            match kind {
                "income" => "INCOME",
                "expense" => "EXPENSE",
                "transfer" => "TRANSFER",
                "dp" => "DEBT_PAYMENT",
                _ => "WITHDRAW",
            }
        } else {
            kind
        };
        let (from_key, to_key) = if rng.chance(5) {
            ("pocket_from", "pocket_to")
        } else {
            ("pocket_from_id", "pocket_to_id")
        };
        let a = rng.below(pockets.len() as u64) as usize;
        let mut d = doc! {
            "_id": id,
            "user_id": self.users[u].id,
            "type": shown_kind,
            "amount": encoded,
        };
        match kind {
            "income" => {
                d.insert(to_key, pockets[a].id);
            }
            "transfer" => {
                // Another pocket, or the same one (a self-transfer) one time in ten.
                let n = pockets.len();
                let b = if rng.chance(10) {
                    a
                } else {
                    (a + 1 + rng.below(n as u64 - 1) as usize) % n
                };
                d.insert(from_key, pockets[a].id);
                d.insert(to_key, pockets[b].id);
            }
            _ => {
                d.insert(from_key, pockets[a].id);
            }
        }
        let cat = rng.below(12);
        if kind != "transfer" && cat < 10 {
            d.insert("category_id", self.categories[cat as usize]);
        }
        d.insert(
            "note",
            if rng.chance(30) {
                Bson::String(format!("note {}", rng.below(1000)))
            } else {
                Bson::Null
            },
        );
        d.insert("date", BsonDateTime::from_millis(date));
        d.insert("created_at", BsonDateTime::from_millis(written));
        d.insert("updated_at", BsonDateTime::from_millis(written));
        d.insert("deleted_at", Bson::Null);
        d
    }

    /// The transaction documents user `u` has when the window is loaded
    /// (deterministic: regenerated on demand rather than kept).
    fn seeded_docs(&self, u: usize) -> Vec<Document> {
        let mut rng = Rng::new(SEED ^ (u as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let from_ms = self.window_start_ms();
        let span = (self.start_ms - from_ms) as u64;
        (0..TX_PER_USER as u64)
            .map(|t| {
                let date = from_ms + rng.below(span) as i64;
                let id = oid(0x7A7A, u as u64 * 1000 + t);
                let mut d = self.tx_doc(&mut rng, u, id, date, date);
                if rng.chance(3) {
                    d.insert("deleted_at", BsonDateTime::from_millis(date + 1000));
                }
                d
            })
            .collect()
    }

    fn pocket_doc(&self, u: usize, p: &PocketSeed, balance: Money, updated: i64) -> Document {
        doc! {
            "_id": p.id,
            "user_id": self.users[u].id,
            "name": p.name.as_str(),
            "type": p.kind,
            "balance": balance.to_bson(),
            "is_active": true,
            "created_at": BsonDateTime::from_millis(p.created),
            "deleted_at": Bson::Null,
            "updated_at": BsonDateTime::from_millis(updated),
        }
    }

    /// What a scan keeps of user `u` (documents decoded as the scan does).
    fn kept(&self, u: usize, transactions: bool) -> Kept {
        let user = &self.users[u];
        Kept {
            transactions: if transactions {
                self.seeded_docs(u)
                    .iter()
                    .filter_map(|d| decode_transaction(d).ok())
                    .collect()
            } else {
                Vec::new()
            },
            pockets: user
                .pockets
                .iter()
                .map(|p| {
                    let pocket = decode_pocket(&self.pocket_doc(u, p, p.balance, p.created))
                        .expect("pocket");
                    (p.id, pocket)
                })
                .collect(),
            stored: Vec::new(),
            baseline: user.baseline,
        }
    }

    fn seed_now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.start_ms).expect("time")
    }

    fn horizon(&self) -> NaiveDate {
        self.today + Days::new(HORIZON_DAYS)
    }
}

/// What seeding put into a window.
#[derive(Default)]
struct Seeded {
    transactions: usize,
    fingerprints: usize,
    by_kind: [usize; 3],
}

/// A window as `load_live` leaves it (`transactions`: with each user's
/// transactions; `fingerprints`: with the stored documents' fingerprints,
/// computed and recorded as a flush would).
fn seed(world: &World, transactions: bool, fingerprints: bool) -> (Live, Seeded) {
    let mut live = Live::new(
        world.cal,
        world.from,
        world.managed_from,
        world.category_labels(),
    );
    let mut seeded = Seeded::default();
    let now = world.seed_now();
    for (u, user) in world.users.iter().enumerate() {
        let kept = world.kept(u, transactions);
        seeded.transactions += kept.transactions.len();
        let displaced = live.insert(user.id, kept);
        assert!(displaced.is_empty());
        if fingerprints {
            let changes = live.compute(
                user.id,
                &Kind::ALL,
                world.from,
                world.horizon(),
                world.today,
                world.today,
                now,
            );
            for c in &changes {
                seeded.by_kind[kind_index(c.kind)] += 1;
            }
            seeded.fingerprints += changes.len();
            let writes: Vec<_> = changes
                .into_iter()
                .map(|c| (c.user, c.period, c.write))
                .collect();
            live.record(&writes);
            // Seeded consistent back to its first document, as after the
            // deep rescan `recheck_pending` queues (which needs the server).
            live.note_computed(&user.id);
            live.note_settled(&user.id);
        }
    }
    (live, seeded)
}

fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::Report => 0,
        Kind::Snapshot => 1,
        Kind::Monthly => 2,
    }
}

// ---------------------------------------------------------------------
// The stream: the coin API's calls as change events

/// Pocket effects of a valid transaction (its own pockets only: every
/// pocket here is the user's).
fn effects(tx: &Transaction) -> Vec<(ObjectId, Money)> {
    if !tx.is_live() {
        return Vec::new();
    }
    let mut out = Vec::new();
    match tx.kind {
        TxType::Income => out.extend(tx.pocket_to.map(|p| (p, tx.amount))),
        TxType::Transfer => {
            out.extend(tx.pocket_from.map(|p| (p, -tx.amount)));
            out.extend(tx.pocket_to.map(|p| (p, tx.amount)));
        }
        _ => out.extend(tx.pocket_from.map(|p| (p, -tx.amount))),
    }
    out
}

#[derive(Default, Debug)]
struct StreamCounts {
    calls: u64,
    new: u64,
    back_dated: u64,
    edits: u64,
    soft_deletes: u64,
    events: u64,
}

/// An endless, time-ordered stream of the API's calls as change events.
struct Stream<'w> {
    world: &'w World,
    rng: Rng,
    /// Stream time of the next call's arrival, in milliseconds.
    next_arrival: f64,
    /// Mean time between calls, in milliseconds.
    gap: f64,
    pending: BinaryHeap<Reverse<(i64, u64)>>,
    docs: HashMap<u64, Document>,
    seq: u64,
    balances: Vec<Vec<Money>>,
    busy_until: Vec<i64>,
    /// Transactions the stream wrote or changed, as they stand now.
    current: HashMap<ObjectId, Document>,
    new_ids: u64,
    counts: StreamCounts,
}

impl<'w> Stream<'w> {
    fn new(world: &'w World, calls_per_second: f64) -> Stream<'w> {
        Stream {
            world,
            rng: Rng::new(SEED + 1),
            next_arrival: world.start_ms as f64,
            gap: 1000.0 / calls_per_second,
            pending: BinaryHeap::new(),
            docs: HashMap::new(),
            seq: 0,
            balances: world
                .users
                .iter()
                .map(|u| u.pockets.iter().map(|p| p.balance).collect())
                .collect(),
            busy_until: vec![0; world.users.len()],
            current: HashMap::new(),
            new_ids: 0,
            counts: StreamCounts::default(),
        }
    }

    /// The next `n` events, encoded as the server sends them.
    fn take(&mut self, n: usize) -> Vec<RawDocumentBuf> {
        (0..n)
            .map(|_| RawDocumentBuf::from_document(&self.next_event()).expect("encode"))
            .collect()
    }

    fn next_event(&mut self) -> Document {
        while self
            .pending
            .peek()
            .is_none_or(|Reverse((t, _))| *t as f64 > self.next_arrival)
        {
            let at = self.next_arrival;
            let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            self.next_arrival += -self.gap * (1.0 - u).ln();
            self.call(at as i64);
        }
        let Reverse((_, seq)) = self.pending.pop().expect("an event");
        self.counts.events += 1;
        self.docs.remove(&seq).expect("its document")
    }

    fn push(&mut self, at: i64, event: Document) {
        self.seq += 1;
        self.pending.push(Reverse((at, self.seq)));
        self.docs.insert(self.seq, event);
    }

    /// The envelope of a change event (resume token, clusterTime,
    /// wallTime, ns, documentKey).
    fn envelope(&self, op: &str, coll: &str, id: ObjectId, at: i64, full: Document) -> Document {
        doc! {
            "_id": { "_data": format!("82{:08X}{:08X}2B042C0100296E5A1004{}46645F696400", at / 1000, self.seq, id.to_hex().to_uppercase()) },
            "operationType": op,
            "clusterTime": Bson::Timestamp(bson::Timestamp { time: (at / 1000) as u32, increment: (self.seq % 1000) as u32 + 1 }),
            "wallTime": BsonDateTime::from_millis(at),
            "fullDocument": full,
            "ns": { "db": "coin", "coll": coll },
            "documentKey": { "_id": id },
        }
    }

    /// One API call of a random user at `arrival`: the transaction write,
    /// then its balance writes.
    fn call(&mut self, arrival: i64) {
        let world = self.world;
        let u = self.rng.below(world.users.len() as u64) as usize;
        let t0 = arrival.max(self.busy_until[u]);
        self.counts.calls += 1;
        let roll = self.rng.below(100);
        let mut delta: Vec<(ObjectId, Money)> = Vec::new();
        let event = match roll {
            0..=3 => {
                // An edit (3%) or a soft delete (1%) of an existing transaction.
                let k = self.rng.below(TX_PER_USER as u64);
                let id = oid(0x7A7A, u as u64 * 1000 + k);
                let old = match self.current.get(&id) {
                    Some(d) => d.clone(),
                    None => world.seeded_docs(u).swap_remove(k as usize),
                };
                let old_tx = decode_transaction(&old).expect("valid");
                let mut new = old.clone();
                let mut updated = doc! {};
                if roll == 3 {
                    self.counts.soft_deletes += 1;
                    new.insert("deleted_at", BsonDateTime::from_millis(t0));
                    updated.insert("deleted_at", BsonDateTime::from_millis(t0));
                } else if self.rng.chance(70) {
                    self.counts.edits += 1;
                    let amount = cents(100 + self.rng.below(50_000) as i64).to_bson();
                    new.insert("amount", amount.clone());
                    updated.insert("amount", amount);
                } else {
                    self.counts.edits += 1;
                    let shift = if self.rng.chance(50) { DAY_MS } else { -DAY_MS };
                    let date = (old_tx.date + shift).clamp(world.window_start_ms(), t0);
                    new.insert("date", BsonDateTime::from_millis(date));
                    updated.insert("date", BsonDateTime::from_millis(date));
                }
                new.insert("updated_at", BsonDateTime::from_millis(t0));
                updated.insert("updated_at", BsonDateTime::from_millis(t0));
                let new_tx = decode_transaction(&new).expect("valid");
                delta.extend(effects(&new_tx));
                delta.extend(effects(&old_tx).into_iter().map(|(p, m)| (p, -m)));
                self.current.insert(id, new.clone());
                let mut event = self.envelope("update", TRANSACTIONS, id, t0, new);
                event.insert(
                    "updateDescription",
                    doc! { "updatedFields": updated, "removedFields": [], "truncatedArrays": [] },
                );
                event
            }
            _ => {
                self.counts.new += 1;
                self.new_ids += 1;
                let id = oid(0x7B7B, self.new_ids);
                let mut date = t0;
                if self.rng.chance(10) {
                    self.counts.back_dated += 1;
                    let days = 1 + self.rng.below(3) as i64;
                    date = t0 - days * DAY_MS - self.rng.below(3 * 3_600_000) as i64;
                }
                let mut rng = Rng::new(self.rng.next_u64());
                let doc = world.tx_doc(&mut rng, u, id, date, t0);
                delta.extend(effects(&decode_transaction(&doc).expect("valid")));
                self.envelope("insert", TRANSACTIONS, id, t0, doc)
            }
        };
        self.push(t0, event);
        // The balance writes, one per pocket whose balance moved.
        let mut at = t0 + 2 + self.rng.below(9) as i64;
        let mut by_pocket: BTreeMap<ObjectId, Money> = BTreeMap::new();
        for (p, m) in delta {
            *by_pocket.entry(p).or_insert(Money::ZERO) += m;
        }
        for (p, m) in by_pocket {
            if m.is_zero() {
                continue;
            }
            let i = world.users[u]
                .pockets
                .iter()
                .position(|s| s.id == p)
                .expect("own pocket");
            self.balances[u][i] += m;
            let full = world.pocket_doc(u, &world.users[u].pockets[i], self.balances[u][i], at);
            let mut event = self.envelope("update", POCKETS, p, at, full);
            event.insert(
                "updateDescription",
                doc! {
                    "updatedFields": { "balance": self.balances[u][i].to_bson(), "updated_at": BsonDateTime::from_millis(at) },
                    "removedFields": [],
                    "truncatedArrays": [],
                },
            );
            self.push(at, event);
            at += 1;
        }
        self.busy_until[u] = at + 1;
    }
}

// ---------------------------------------------------------------------
// The tailer's work, minus the I/O

#[derive(Default, Debug)]
struct Totals {
    events: u64,
    unreadable: u64,
    flushes: u64,
    users_computed: u64,
    changes: u64,
    writes: [u64; 3],
    /// Bytes of the documents those writes leave, by kind.
    written_bytes: [u64; 3],
    /// Computations that start at today, and the changes they found.
    from_today: u64,
    from_today_changes: u64,
    held: u64,
    drift_written: u64,
    /// Users computed from their floor, their past left for later
    /// (`Tailer::past_waits`).
    past_waited: u64,
    /// Work the real tailer would do through the server, skipped here.
    rescans_skipped: u64,
    locates_skipped: u64,
}

/// One flush's times (by the bench's clock) and size.
#[derive(Clone, Copy, Debug)]
struct Flush {
    build: Duration,
    total: Duration,
    users: usize,
}

/// `Tailer`'s in-memory state and the parts of `Work` and `Checkpoint` a
/// flush uses.
struct Tail {
    live: Live,
    cal: Calendar,
    managed_from: NaiveDate,
    settle: chrono::Duration,
    /// user → first day to recompute.
    dirty: HashMap<ObjectId, NaiveDate>,
    rescan: HashSet<ObjectId>,
    /// user → (earliest day a recent transaction event touched, when).
    floors: HashMap<ObjectId, (NaiveDate, DateTime<Utc>)>,
    /// `Work::redo`: users whose past waited for a balance write.
    redo: HashMap<ObjectId, (NaiveDate, DateTime<Utc>)>,
    /// The checkpoint's pending users.
    pending: HashMap<ObjectId, DateTime<Utc>>,
    verdicts: Vec<(&'static str, SourceId, Option<RejectReason>)>,
    known_rejects: HashSet<String>,
    /// The stream's clock: `wallTime` of the last event.
    wall_ms: i64,
    totals: Totals,
}

impl Tail {
    fn new(live: Live, world: &World) -> Tail {
        Tail {
            live,
            cal: world.cal,
            managed_from: world.managed_from,
            settle: chrono::Duration::seconds(SETTLE_SECONDS),
            dirty: HashMap::new(),
            rescan: HashSet::new(),
            floors: HashMap::new(),
            redo: HashMap::new(),
            pending: HashMap::new(),
            verdicts: Vec::new(),
            known_rejects: HashSet::new(),
            wall_ms: world.start_ms,
            totals: Totals::default(),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.wall_ms).expect("time")
    }

    /// `Tailer::mark` with `Work::mark`.
    fn mark(&mut self, user: ObjectId, day: NaiveDate, tx_day: Option<NaiveDate>) {
        if day < self.live.open_from() || !self.live.holds(&user) {
            self.rescan.insert(user);
        }
        let e = self.dirty.entry(user).or_insert(day);
        *e = (*e).min(day);
        if let Some(d) = tx_day {
            let now = self.now();
            let floor = self.floors.entry(user).or_insert((d, now));
            if now - floor.1 >= self.settle {
                *floor = (d, now);
            } else {
                *floor = (floor.0.min(d), now);
            }
        }
    }

    /// `Work::floor`.
    fn floor(&self, user: &ObjectId, now: DateTime<Utc>) -> Option<NaiveDate> {
        self.floors
            .get(user)
            .filter(|(_, at)| now - *at < self.settle)
            .map(|(d, _)| *d)
    }

    /// `Tailer::handle` (telemetry and `count_late` aside).
    fn handle(&mut self, raw: &RawDocument) {
        self.totals.events += 1;
        let event = match Event::from_raw(raw) {
            Ok(e) => e,
            Err(_) => {
                self.totals.unreadable += 1;
                return;
            }
        };
        if let Some(wall) = event.wall_millis {
            self.wall_ms = wall;
        }
        match event.operation_type {
            OperationType::Insert
            | OperationType::Update
            | OperationType::Replace
            | OperationType::Delete => {}
            _ => return,
        }
        let id = event.id;
        let is_delete = event.operation_type == OperationType::Delete;
        let has_old = event.full_document_before_change.is_some();
        let cal = self.cal;
        match event.collection {
            TRANSACTIONS => {
                let mut new_tx = None;
                if let Some(doc) = &event.full_document {
                    match decode_transaction(doc) {
                        Ok(tx) => {
                            self.verdicts.push((TRANSACTIONS, tx.id.clone(), None));
                            new_tx = Some(tx);
                        }
                        Err(r) => {
                            self.verdicts
                                .push((TRANSACTIONS, SourceId::from_bson(&id), Some(r)));
                        }
                    }
                }
                let (touched, known) = self
                    .live
                    .set_transaction(&SourceId::from_bson(&id), new_tx.as_ref());
                let old = event
                    .full_document_before_change
                    .as_ref()
                    .and_then(|d| decode_transaction(d).ok())
                    .map(|tx| (tx.user_id, cal.day_of_millis(tx.date)));
                for (user, day) in touched {
                    self.mark(user, day, Some(day));
                }
                if !known {
                    if let Some((user, day)) = old {
                        self.mark(user, day, Some(day));
                    } else if !has_old && event.operation_type != OperationType::Insert {
                        // Located through the stored reports: server I/O.
                        self.totals.locates_skipped += 1;
                    }
                }
                if is_delete {
                    self.verdicts
                        .push((TRANSACTIONS, SourceId::from_bson(&id), None));
                }
            }
            POCKETS => {
                let new = event
                    .full_document
                    .as_ref()
                    .and_then(|d| decode_pocket(d).ok());
                let old = event
                    .full_document_before_change
                    .as_ref()
                    .and_then(|d| decode_pocket(d).ok());
                match event.full_document.as_ref().map(decode_pocket) {
                    Some(Ok(p)) => {
                        let verdict = p.reject_reason();
                        self.verdicts.push((POCKETS, SourceId::Oid(p.id), verdict));
                    }
                    Some(Err(r)) => {
                        self.verdicts
                            .push((POCKETS, SourceId::from_bson(&id), Some(r)));
                    }
                    None => self
                        .verdicts
                        .push((POCKETS, SourceId::from_bson(&id), None)),
                }
                let balance_only = new.as_ref().is_some_and(|n| self.live.balance_only(n));
                let (mut users, known) = match id.as_object_id() {
                    Some(pocket) => self.live.set_pocket(pocket, new.as_ref()),
                    None => (Vec::new(), false),
                };
                users.extend(old.iter().chain(&new).filter_map(|p| p.user_id));
                users.sort_by_key(|u| u.bytes());
                users.dedup();
                if users.is_empty()
                    || (!known && !has_old && event.operation_type != OperationType::Insert)
                {
                    self.totals.locates_skipped += 1;
                }
                let change = PocketChange {
                    insert: event.operation_type == OperationType::Insert,
                    new: new.as_ref(),
                    old: old.as_ref(),
                    balance_only,
                };
                let today = self.cal.day_of(self.now());
                let (first, floor) =
                    change.days(&cal, self.managed_from, self.live.open_from(), today);
                for user in users {
                    self.mark(user, first, floor);
                }
            }
            _ => {}
        }
    }

    /// `Tailer::flush_dirty` from memory: build, compare, hold, record,
    /// settle the verdicts. Times by `clock`.
    fn flush(&mut self, clock: fn() -> Duration) -> Flush {
        let started = clock();
        let now = self.now();
        let today = self.cal.day_of(now);
        // The reports of yesterday were made final at 23:59.
        let reports_open_from = today;
        let to = today + Days::new(HORIZON_DAYS);
        let open = self.live.open_from();
        // `Tailer::recheck_pending` (run at every step there): users whose
        // past waited for a balance write that did not come within their
        // floor are queued again, pending since their past first waited.
        let due: Vec<(ObjectId, (NaiveDate, DateTime<Utc>))> = (self.redo.iter())
            .filter(|(u, _)| !self.dirty.contains_key(u) && self.floor(u, now).is_none())
            .map(|(u, r)| (*u, *r))
            .collect();
        for (user, (day, since)) in due {
            let day = if self.live.anchors_moved(&user) {
                self.pending.entry(user).or_insert(since);
                open
            } else {
                day
            };
            self.mark(user, day, None);
        }
        let mut per_user: Vec<(ObjectId, Vec<DocChange>)> = Vec::with_capacity(self.dirty.len());
        let mut from_open = HashSet::new();
        let mut later = HashSet::new();
        for (user, day) in std::mem::take(&mut self.dirty) {
            if self.rescan.remove(&user) {
                // A focused scan of the source: server I/O.
                self.totals.rescans_skipped += 1;
                self.redo.remove(&user);
                continue;
            }
            let day = self.redo.get(&user).map_or(day, |r| day.min(r.0));
            // `Tailer::past_waits`.
            let waits = self.floor(&user, now).filter(|f| *f > open);
            let day = match (self.live.anchors_moved(&user), waits) {
                (true, Some(floor)) => {
                    later.insert(user);
                    self.totals.past_waited += 1;
                    let day = day.min(floor);
                    self.redo.entry(user).or_insert((day, now)).0 = day;
                    day
                }
                (true, None) => day.min(open),
                (false, _) => day,
            };
            if day <= open {
                from_open.insert(user);
            }
            let changes =
                self.live
                    .compute(user, &Kind::ALL, day, to, today, reports_open_from, now);
            if day == today {
                self.totals.from_today += 1;
                self.totals.from_today_changes += changes.len() as u64;
            }
            per_user.push((user, changes));
        }
        let build = clock() - started;
        let users = per_user.len();
        self.totals.users_computed += users as u64;
        self.totals.changes += per_user.iter().map(|(_, c)| c.len() as u64).sum::<u64>();
        for (user, _) in per_user.iter().filter(|(u, _)| !later.contains(u)) {
            self.live.note_computed(user);
            self.redo.remove(user);
        }
        let writes = self.hold_past_changes(per_user, now, &from_open, &later);
        for (_, _, w) in &writes {
            self.totals.writes[kind_index(w.kind())] += 1;
            if let Write::Upsert { set, .. } = w {
                self.totals.written_bytes[kind_index(w.kind())] += set.as_bytes().len() as u64;
            }
        }
        // `Tailer::write` records the writes, then sends them (skipped).
        self.live.record(&writes);
        drop(writes);
        self.settle_rejects();
        self.totals.flushes += 1;
        Flush {
            build,
            total: clock() - started,
            users,
        }
    }

    /// `Tailer::hold_past_changes` (no deep rescans, no start comparison).
    fn hold_past_changes(
        &mut self,
        per_user: Vec<(ObjectId, Vec<DocChange>)>,
        now: DateTime<Utc>,
        from_open: &HashSet<ObjectId>,
        later: &HashSet<ObjectId>,
    ) -> Vec<(ObjectId, NaiveDate, Write)> {
        let managed_from = self.managed_from;
        let mut writes = Vec::new();
        for (user, changes) in per_user {
            let floor = self.floor(&user, now);
            let (now_due, held) = split_at_floor(changes, floor, managed_from);
            writes.extend(now_due.into_iter().map(|c| (c.user, c.period, c.write)));
            if held.is_empty() {
                if later.contains(&user) {
                    // Its past was not computed: pending stays as it was.
                } else if !self.live.anchors_settled(&user) {
                    self.pending.entry(user).or_insert(now);
                } else if from_open.contains(&user) {
                    self.pending.remove(&user);
                }
                continue;
            }
            self.totals.held += held.len() as u64;
            match self.pending.get(&user) {
                Some(since) if now - *since >= self.settle && floor.is_none() => {
                    self.totals.drift_written += held.len() as u64;
                    writes.extend(held.into_iter().map(|c| (c.user, c.period, c.write)));
                }
                Some(_) => {}
                None => {
                    self.pending.insert(user, now);
                }
            }
        }
        writes
    }

    /// `Tailer::settle_rejects` without its two server calls.
    fn settle_rejects(&mut self) {
        let mut last: HashMap<(&'static str, &SourceId), Option<RejectReason>> = HashMap::new();
        for (coll, id, verdict) in &self.verdicts {
            last.insert((*coll, id), *verdict);
        }
        let recorded = |coll: &str, id: &SourceId| {
            !self.known_rejects.is_empty() && self.known_rejects.contains(&reject_key(coll, id))
        };
        let mut rejects = Vec::new();
        let mut corrected = Vec::new();
        for (&(coll, id), verdict) in &last {
            match verdict {
                Some(reason) => rejects.push((coll, id.clone(), *reason)),
                None if recorded(coll, id) => corrected.push((coll, id.clone())),
                None => {}
            }
        }
        std::hint::black_box((&rejects, &corrected));
        for ((coll, id), verdict) in last {
            match verdict {
                Some(_) => {
                    self.known_rejects.insert(reject_key(coll, id));
                }
                None if !self.known_rejects.is_empty() => {
                    self.known_rejects.remove(&reject_key(coll, id));
                }
                None => {}
            }
        }
        self.verdicts.clear();
    }
}

// ---------------------------------------------------------------------
// Reporting helpers

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The `p`-th percentile (nearest rank) of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

// ---------------------------------------------------------------------
// Phases

struct Params {
    users: usize,
    events: usize,
    flush_events: usize,
    rate: f64,
    sample: usize,
}

impl Params {
    fn from_env() -> Params {
        let bench = common::benching();
        Params {
            users: common::env("TALLY_BENCH_USERS", if bench { 10_000 } else { 100 }),
            events: common::env(
                "TALLY_BENCH_LIVE_EVENTS",
                if bench { 60_000 } else { 1_000 },
            ),
            flush_events: common::env("TALLY_BENCH_LIVE_FLUSH_EVENTS", 500).max(1),
            rate: common::env("TALLY_BENCH_LIVE_RATE", 2_500).max(1) as f64,
            sample: common::env("TALLY_BENCH_LIVE_SAMPLE", if bench { 1_000 } else { 20 }),
        }
    }
}

/// Heap of the window: seeded three ways, differenced; then the structures
/// behind the figures, rebuilt alike for a sample of users.
fn memory(world: &World, p: &Params) -> (Live, Seeded) {
    let users = world.users.len() as f64;
    let (bare, pockets_only) = held(|| seed(world, false, false));
    drop(bare);
    let ((with_tx, tx), transactions) = held(|| seed(world, true, false));
    drop(with_tx);
    let ((live, seeded), full) = held(|| seed(world, true, true));
    assert_eq!(seeded.transactions, tx.transactions);
    let n_tx = seeded.transactions as f64;
    let n_fp = seeded.fingerprints as f64;
    let per_tx = (transactions.bytes - pockets_only.bytes) as f64 / n_tx;
    let per_fp = (full.bytes - transactions.bytes) as f64 / n_fp;
    let per_tx_chunks = (transactions.chunks - pockets_only.chunks) as f64 / n_tx;
    let per_fp_chunks = (full.chunks - transactions.chunks) as f64 / n_fp;
    println!(
        "\nheap held by Live (bytes asked for; glibc chunks, header and rounding included, in brackets):"
    );
    println!(
        "  users and pockets only:        {} ({}) = {} per user [{}], {} blocks",
        mib(pockets_only.bytes),
        mib(pockets_only.chunks),
        kib(pockets_only.bytes as f64 / users),
        kib(pockets_only.chunks as f64 / users),
        thousands(pockets_only.blocks as u64)
    );
    println!(
        "  + {} transactions:        {} ({}) = {:.0} B per transaction [{:.0} B]",
        thousands(seeded.transactions as u64),
        mib(transactions.bytes),
        mib(transactions.chunks),
        per_tx,
        per_tx_chunks
    );
    println!(
        "  + {} fingerprints ({} reports, {} snapshots, {} summaries): {} ({}) = {:.0} B per fingerprint [{:.0} B]",
        thousands(seeded.fingerprints as u64),
        thousands(seeded.by_kind[0] as u64),
        thousands(seeded.by_kind[1] as u64),
        thousands(seeded.by_kind[2] as u64),
        mib(full.bytes),
        mib(full.chunks),
        per_fp,
        per_fp_chunks
    );
    let per_user = full.bytes as f64 / users;
    let label = format!(
        "Live after seeding: heap held ({} users × {} transactions over 60 days, {:.0} fingerprints per user)",
        thousands(world.users.len() as u64),
        TX_PER_USER,
        n_fp / users
    );
    common::row(
        LIVE,
        &label,
        &format!(
            "{} = {} per user ({} with malloc's overhead)",
            mib(full.bytes),
            kib(per_user),
            kib(full.chunks as f64 / users)
        ),
        "target ≤ 12 KiB per user",
    );
    common::row(
        LIVE,
        "Live: heap per user without transactions or fingerprints (state, pockets, maps)",
        &kib(pockets_only.bytes as f64 / users),
        "counting allocator (bytes asked for)",
    );
    common::row(
        LIVE,
        "Live: heap per held transaction (transaction map entry, owner map)",
        &format!("{per_tx:.0} B ({per_tx_chunks:.0} B with malloc's overhead)"),
        "by difference: seeded with and without transactions",
    );
    common::row(
        LIVE,
        "Live: heap per stored fingerprint (StoredMeta and its map entry)",
        &format!("{per_fp:.0} B ({per_fp_chunks:.0} B with malloc's overhead)"),
        "by difference: seeded with and without fingerprints",
    );
    structures(world, p);
    (live, seeded)
}

/// The structures `Live` holds per user, rebuilt alike (same types, same
/// insertion order) for a sample of users, and its owner maps for all.
fn structures(world: &World, p: &Params) {
    let sample = p.sample.min(world.users.len()).max(1);
    let cal = world.cal;
    let categories = world.category_labels();
    let mut sizes = [Heap::default(); 5];
    let mut counts = [0usize; 3];
    for u in 0..sample {
        let user = world.users[u].id;
        // As `Live::insert` builds them: the transactions held compactly
        // in their map at once (their notes with them) with the ids they
        // name, the pockets moved in; and the ledger a flush folds from
        // them (sharing the notes).
        let ((txs, refs), h) = held(|| {
            let mut refs = Refs::default();
            let txs = world.kept(u, true).transactions;
            let txs = Sorted::from_unsorted(txs.iter().map(|t| refs.hold(t)).collect());
            (txs, refs)
        });
        sizes[0] = add(sizes[0], h);
        counts[0] += txs.len();
        let (ledger, h) = held(|| {
            let mut ledger = UserLedger::default();
            for t in txs.as_slice() {
                ledger.apply(&cal, &refs.expand(user, t));
            }
            ledger
        });
        sizes[1] = add(sizes[1], h);
        counts[1] += ledger.days.len();
        let (held_pockets, h) =
            held(|| Sorted::from_unsorted(world.kept(u, false).pockets.into_values().collect()));
        sizes[2] = add(sizes[2], h);
        let view = UserView::new(user, &ledger, held_pockets.as_slice(), &categories, &cal)
            .with_ytd_baseline(world.users[u].baseline);
        let docs = view.build_range(&Kind::ALL, world.from, world.horizon(), world.today);
        // As `Live` keeps them: packed, in one vector sorted by (kind,
        // period), trimmed to its length.
        let (stored, h) = held(|| {
            Metas::from_unsorted(
                docs.iter()
                    .map(|(kind, period, doc)| ((*kind, *period), StoredMeta::of(*kind, doc)))
                    .collect(),
            )
        });
        sizes[3] = add(sizes[3], h);
        counts[2] += stored.len();
        drop(view);
        drop((txs, refs, ledger, held_pockets, stored));
    }
    // The owner maps, for every user, in the order a load inserts them.
    let (owners, h) = held(|| {
        let mut tx_owner = TxOwners::default();
        let mut pocket_owner: HashMap<ObjectId, Slot> = HashMap::new();
        let mut slots: HashMap<ObjectId, Slot> = HashMap::new();
        for (u, user) in world.users.iter().enumerate() {
            let slot = u as Slot;
            for t in 0..TX_PER_USER as u64 {
                tx_owner.insert(&SourceId::Oid(oid(0x7A7A, u as u64 * 1000 + t)), slot);
            }
            for pocket in &user.pockets {
                pocket_owner.insert(pocket.id, slot);
            }
            slots.insert(user.id, slot);
        }
        (tx_owner, pocket_owner, slots)
    });
    sizes[4] = h;
    let (tx_owner_len, pocket_owner_len) = (owners.0.len(), owners.1.len());
    drop(owners);
    let n = sample as f64;
    let users = world.users.len() as f64;
    println!(
        "\nper user, from {sample} users rebuilt alike (bytes asked for [with malloc's overhead]):"
    );
    let lines = [
        (
            "UserState.transactions + refs (Sorted<Held>: a vector by id)",
            sizes[0],
            format!("{:.0} transactions", counts[0] as f64 / n),
        ),
        (
            "a ledger folded for a flush (UserLedger; transient, not held)",
            sizes[1],
            format!("{:.1} days with transactions", counts[1] as f64 / n),
        ),
        (
            "UserState.pockets (Sorted<Pocket>: a vector by id)",
            sizes[2],
            format!(
                "{:.1} pockets",
                world.users[..sample]
                    .iter()
                    .map(|u| u.pockets.len())
                    .sum::<usize>() as f64
                    / n
            ),
        ),
        (
            "UserState.stored (Metas: packed with their keys, sorted)",
            sizes[3],
            format!("{:.0} fingerprints", counts[2] as f64 / n),
        ),
    ];
    for (name, h, note) in &lines {
        let per = h.bytes as f64 / n;
        println!(
            "  {name:<62} {:>9} [{:>9}]  {note}",
            kib(per),
            kib(h.chunks as f64 / n)
        );
        common::row(
            LIVE,
            &format!("Live per user: {name}"),
            &format!("{} ({note})", kib(per)),
            "rebuilt alike for a sample, counting allocator",
        );
    }
    let owner = sizes[4].bytes as f64 / users;
    println!(
        "  {:<62} {:>9} [{:>9}]  {} + {} + {} entries over all users",
        "Live.tx_owner + pocket_owner + slots (owner index and maps, whole window)",
        kib(owner),
        kib(sizes[4].chunks as f64 / users),
        thousands(tx_owner_len as u64),
        thousands(pocket_owner_len as u64),
        thousands(world.users.len() as u64)
    );
    common::row(
        LIVE,
        "Live per user: tx_owner + pocket_owner + slots (owner index and maps)",
        &kib(owner),
        "rebuilt alike for all users, counting allocator",
    );
    println!(
        "  sizes: Transaction {} B (held: {} B), SourceId {} B, StoredMeta {} B, Pocket {} B, DayAgg {} B, PocketDay {} B, TxEntry {} B",
        std::mem::size_of::<Transaction>(),
        std::mem::size_of::<Held>(),
        std::mem::size_of::<SourceId>(),
        std::mem::size_of::<StoredMeta>(),
        std::mem::size_of::<tally::core::source::Pocket>(),
        std::mem::size_of::<tally::core::ledger::DayAgg>(),
        std::mem::size_of::<tally::core::ledger::PocketDay>(),
        std::mem::size_of::<tally::core::ledger::TxEntry>(),
    );
}

fn add(a: Heap, b: Heap) -> Heap {
    Heap {
        bytes: a.bytes + b.bytes,
        chunks: a.chunks + b.chunks,
        blocks: a.blocks + b.blocks,
    }
}

/// Where one user's build goes: the same user's documents built piece by
/// piece, against `Live::compute` of its whole open window.
fn breakdown(world: &World, live: &Live, p: &Params, clock: fn() -> Duration) {
    let sample = p.sample.min(world.users.len()).max(1);
    let cal = world.cal;
    let categories = world.category_labels();
    let now = world.seed_now();
    let to = world.horizon();
    let mut t = [Duration::ZERO; 6];
    let mut docs = [0usize; 3];
    for u in 0..sample {
        let kept = world.kept(u, true);
        let user = world.users[u].id;
        let mut ledger = UserLedger::default();
        for tx in &kept.transactions {
            ledger.apply(&cal, tx);
        }
        let s = clock();
        let view = UserView::new(user, &ledger, kept.pockets.values(), &categories, &cal)
            .with_ytd_baseline(kept.baseline);
        t[0] += clock() - s;
        let mut all = Vec::new();
        for kind in Kind::ALL {
            let s = clock();
            let built = view.build_range(&[kind], world.from, to, world.today);
            t[1 + kind_index(kind)] += clock() - s;
            docs[kind_index(kind)] += built.len();
            all.extend(built);
        }
        let s = clock();
        let n = all
            .iter()
            .map(|(_, _, d)| fingerprint(d))
            .fold(0, u64::wrapping_add);
        t[4] += clock() - s;
        std::hint::black_box(n);
        drop(all);
        let s = clock();
        let changes = live.compute(
            user,
            &Kind::ALL,
            live.open_from(),
            to,
            world.today,
            world.today,
            now,
        );
        t[5] += clock() - s;
        assert!(changes.is_empty(), "seeded fingerprints match");
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / sample as f64;
    let compute = per(t[5]);
    println!("\none user's build over the whole open window (the flush of a balance change), mean of {sample} users:");
    let parts = [
        ("UserView::new (balances, year-to-date sums)", t[0], None),
        ("daily reports", t[1], Some(docs[0])),
        ("snapshots", t[2], Some(docs[1])),
        ("monthly summaries", t[3], Some(docs[2])),
        ("fingerprints of every document", t[4], None),
    ];
    let mut pieces = 0.0;
    for (name, d, n) in parts {
        pieces += per(d);
        let n = n.map_or(String::new(), |n| {
            format!("{:.1} documents", n as f64 / sample as f64)
        });
        println!(
            "  {name:<46} {:>7.1} µs ({:>4.1}%)  {n}",
            per(d),
            100.0 * per(d) / compute
        );
    }
    println!(
        "  {:<46} {:>7.1} µs ({:>4.1}%)  (stored fingerprints looked up, compared)",
        "the rest of Live::compute",
        compute - pieces,
        100.0 * (compute - pieces) / compute
    );
    println!("  {:<46} {compute:>7.1} µs", "Live::compute, all kinds");
    common::row(
        LIVE,
        "live path: Live::compute of one user's open window (all documents built, fingerprinted, compared)",
        &format!(
            "{compute:.0} µs ({:.0} reports, {:.0} snapshots, {:.0} summaries)",
            docs[0] as f64 / sample as f64,
            docs[1] as f64 / sample as f64,
            docs[2] as f64 / sample as f64
        ),
        &format!(
            "reports {:.0}%, snapshots {:.0}%, summaries {:.0}%, fingerprints {:.0}%",
            100.0 * per(t[1]) / compute,
            100.0 * per(t[2]) / compute,
            100.0 * per(t[3]) / compute,
            100.0 * per(t[4]) / compute
        ),
    );
}

/// One full replay of the recorded stream, each flush timed on its own.
fn replay(tail: &mut Tail, stream: &[RawDocumentBuf], p: &Params, clock: fn() -> Duration) {
    let mut flushes: Vec<Flush> = Vec::new();
    let mut handling = Duration::ZERO;
    let started = clock();
    for block in stream.chunks(p.flush_events) {
        let s = clock();
        for raw in block {
            tail.handle(raw);
        }
        handling += clock() - s;
        flushes.push(tail.flush(clock));
    }
    let total = clock() - started;
    let events = stream.len() as f64;
    let per_second = events / total.as_secs_f64();
    let mut builds: Vec<Duration> = flushes.iter().map(|f| f.build).collect();
    let mut wholes: Vec<Duration> = flushes.iter().map(|f| f.total).collect();
    builds.sort();
    wholes.sort();
    let build_sum: Duration = builds.iter().sum();
    let flush_sum: Duration = wholes.iter().sum();
    let users: usize = flushes.iter().map(|f| f.users).sum();
    let mean_users = users as f64 / flushes.len() as f64;
    let t = &tail.totals;
    println!(
        "\nreplay: {} events in {} flushes of {} events: {:.2} s → {} events/s",
        thousands(events as u64),
        flushes.len(),
        p.flush_events,
        total.as_secs_f64(),
        thousands(per_second as u64)
    );
    println!(
        "  decode → apply → mark: {:.2} s ({:.1}%, {:.1} µs per event); build (Live::compute): {:.2} s ({:.1}%); hold, record, verdicts: {:.2} s ({:.1}%)",
        handling.as_secs_f64(),
        100.0 * handling.as_secs_f64() / total.as_secs_f64(),
        handling.as_secs_f64() * 1e6 / events,
        build_sum.as_secs_f64(),
        100.0 * build_sum.as_secs_f64() / total.as_secs_f64(),
        (flush_sum - build_sum).as_secs_f64(),
        100.0 * (flush_sum - build_sum).as_secs_f64() / total.as_secs_f64(),
    );
    println!(
        "  per flush: {mean_users:.0} dirty users computed on average; build p50 {} / p99 {} / max {}; whole flush p50 {} / p99 {} / max {}",
        ms(percentile(&builds, 50.0)),
        ms(percentile(&builds, 99.0)),
        ms(percentile(&builds, 100.0)),
        ms(percentile(&wholes, 50.0)),
        ms(percentile(&wholes, 99.0)),
        ms(percentile(&wholes, 100.0)),
    );
    println!(
        "  {} users computed, {} documents differing, writes: {} reports, {} snapshots, {} summaries ({:.2} per event); {} held as past, {} written as drift; pending users {}; {} computations from the floor, the past waiting for a balance write",
        thousands(t.users_computed),
        thousands(t.changes),
        thousands(t.writes[0]),
        thousands(t.writes[1]),
        thousands(t.writes[2]),
        t.writes.iter().sum::<u64>() as f64 / t.events as f64,
        thousands(t.held),
        thousands(t.drift_written),
        thousands(tail.pending.len() as u64),
        thousands(t.past_waited),
    );
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mean = |b: u64, n: u64| b.checked_div(n).unwrap_or(0);
    let (bytes, writes) = (t.written_bytes, t.writes);
    let reaching_back = t.users_computed - t.from_today;
    println!(
        "  documents written: {:.1} / {:.1} / {:.1} MiB (reports / snapshots / summaries; {} / {} / {} B each), {} B per event; computations from today {} ({:.2} documents differing each), reaching back {} ({:.2} each)",
        mib(bytes[0]),
        mib(bytes[1]),
        mib(bytes[2]),
        mean(bytes[0], writes[0]),
        mean(bytes[1], writes[1]),
        mean(bytes[2], writes[2]),
        mean(bytes.iter().sum(), t.events),
        thousands(t.from_today),
        t.from_today_changes as f64 / t.from_today.max(1) as f64,
        thousands(reaching_back),
        (t.changes - t.from_today_changes) as f64 / reaching_back.max(1) as f64,
    );
    println!(
        "  skipped (server I/O): {} rescans, {} locates; unreadable events {}",
        t.rescans_skipped, t.locates_skipped, t.unreadable
    );
    common::row(
        LIVE,
        &format!(
            "live path: events/s, decode → apply → build → compare ({} users, flush every {} events, no I/O)",
            thousands(p.users as u64),
            p.flush_events
        ),
        &thousands(per_second as u64),
        &format!(
            "tally's CPU, one core (target ≥ 200,000); build {:.0}% of it",
            100.0 * build_sum.as_secs_f64() / total.as_secs_f64()
        ),
    );
    common::row(
        LIVE,
        &format!(
            "live path: one flush's build (Live::compute of its dirty users), p99 over {} flushes",
            flushes.len()
        ),
        &format!(
            "{} (p50 {}, max {}; {mean_users:.0} users per flush)",
            ms(percentile(&builds, 99.0)),
            ms(percentile(&builds, 50.0)),
            ms(percentile(&builds, 100.0))
        ),
        "target ≤ 20 ms",
    );
    common::row(
        LIVE,
        "live path: one whole flush (build, hold, record, verdicts), p99",
        &ms(percentile(&wholes, 99.0)),
        "tally's CPU, one core",
    );
}

/// Criterion: the path and the build alone, one flush per iteration, the
/// stream continuing where the replay left it.
fn criterion_benches<M: Measurement<Value = Duration>>(
    c: &mut Criterion<M>,
    tail: &mut Tail,
    stream: &mut Stream,
    p: &Params,
    clock: fn() -> Duration,
) {
    let n = p.flush_events;
    let mut g = c.benchmark_group("live");
    g.throughput(Throughput::Elements(n as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("path_per_flush", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let block = stream.take(n);
                let s = clock();
                for raw in &block {
                    tail.handle(raw);
                }
                tail.flush(clock);
                total += clock() - s;
            }
            total
        });
    });
    g.finish();
    let mut g = c.benchmark_group("live_flush");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("build", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                for raw in &stream.take(n) {
                    tail.handle(raw);
                }
                total += tail.flush(clock).build;
            }
            total
        });
    });
    g.finish();
}

fn main() {
    let wall = std::env::var("TALLY_BENCH_CLOCK").is_ok_and(|v| v == "wall")
        || ThreadCpuTime::now().is_none();
    let clock: fn() -> Duration = if wall { wall_clock } else { cpu_clock };
    eprintln!(
        "live bench: {}",
        if wall {
            "wall-clock time"
        } else {
            "CPU time of the bench thread"
        }
    );
    let p = Params::from_env();
    let began = Instant::now();
    let world = World::new(p.users);
    println!(
        "world: {} users, {} pockets, {} transactions each over {} to {} ({}), stream from {} 10:00 at {} calls/s",
        thousands(p.users as u64),
        thousands(world.users.iter().map(|u| u.pockets.len() as u64).sum()),
        TX_PER_USER,
        world.from,
        world.today,
        world.cal.name(),
        world.today,
        p.rate
    );
    let (live, seeded) = memory(&world, &p);
    COUNTING.store(false, Relaxed);
    println!(
        "seeded: {} transactions, {} fingerprints ({:.1} s since start)",
        thousands(seeded.transactions as u64),
        thousands(seeded.fingerprints as u64),
        began.elapsed().as_secs_f64()
    );
    breakdown(&world, &live, &p, clock);
    let mut stream = Stream::new(&world, p.rate);
    let recorded = stream.take(p.events);
    let bytes: usize = recorded.iter().map(|r| r.as_bytes().len()).sum();
    println!(
        "\nstream: {} events recorded ({:.1} MiB, {:.0} B each), {} calls: {} new ({} back-dated), {} edits, {} soft deletes; {:.1} s of stream time",
        thousands(recorded.len() as u64),
        bytes as f64 / (1024.0 * 1024.0),
        bytes as f64 / recorded.len().max(1) as f64,
        thousands(stream.counts.calls),
        thousands(stream.counts.new),
        thousands(stream.counts.back_dated),
        thousands(stream.counts.edits),
        thousands(stream.counts.soft_deletes),
        (stream.next_arrival - world.start_ms as f64) / 1000.0
    );
    let mut tail = Tail::new(live, &world);
    replay(&mut tail, &recorded, &p, clock);
    drop(recorded);
    println!(
        "(manual phases took {:.1} s)\n",
        began.elapsed().as_secs_f64()
    );
    if wall {
        let mut c = Criterion::default()
            .with_measurement(WallTime)
            .configure_from_args();
        criterion_benches(&mut c, &mut tail, &mut stream, &p, clock);
        c.final_summary();
    } else {
        let mut c = Criterion::default()
            .with_measurement(ThreadCpuTime)
            .configure_from_args();
        criterion_benches(&mut c, &mut tail, &mut stream, &p, clock);
        c.final_summary();
    }
    eprintln!("live bench: {:.1} s in all", began.elapsed().as_secs_f64());
}
