//! Issue 11's measure: documents `tally run` rewrites per API call when the
//! pocket balances are written the way coin writes them, through float64
//! (Decimal128 → f64 → add → shortest text → Decimal128), which leaves
//! noise such as 2144365.3999999994 in the stored balance. Before commit
//! 73d9704 tally read that noise as drift and restated past documents on
//! every API call; it now reads balances at whole cents, half-even.
//!
//! Run: `cargo bench --bench rewrites` (defaults: 200 users × 50
//! transactions seeded over 60 days, tally started with `--initial-days 7
//! --settle-seconds 2`, then two phases of 300 API calls each at 50 calls
//! per second). An API call is coin's write pattern: a transaction insert
//! (an expense or an income on one of the user's pockets, dated now or, one
//! call in four, 1 to 3 days back), then the pocket's balance `$set`.
//! Phase **exact** writes each new balance as the exact decimal; phase
//! **float** writes it as coin computes it, through f64 (the same calls,
//! drawn once). Before them, a warm-up (not counted) makes one call on each
//! user: the first recomputation of a user after tally's start may write,
//! once, documents the start left out (reports before the managed start),
//! which would count against whichever phase touched the user first.
//!
//! After each phase the bench waits until tally has settled: no change
//! event on the three output collections for 3 × the settle delay, and
//! tally's stored checkpoint (saved only with nothing left to flush)
//! covering the phase's last write with no user pending (at most
//! `TALLY_BENCH_DRAIN_SECONDS`, 120). Every document's `revision` (1 on the
//! first write, + 1 on each change of content) is read before and after the
//! phase: the documents written are the sum of the revision increases,
//! plus the revision of each new document, plus each deleted one; the past
//! documents rewritten are the documents of closed periods (a `report_date`
//! or `snapshot_date` before today, a `month` before this month) that
//! changed, new ones included. Changed documents beyond the calls' reach
//! (what a transaction changes by itself: its user's reports from its day
//! on, snapshots from its day to yesterday, summaries from its month on)
//! are counted apart: that is what drift restates.
//!
//! Sizes: `TALLY_BENCH_USERS` (200), `TALLY_BENCH_TX_PER_USER` (50),
//! `TALLY_BENCH_CALLS` (300 per phase), `TALLY_BENCH_RATE` (50 calls/s);
//! `TALLY_BENCH_TALLY_BIN` runs another `tally` binary (default the one
//! cargo built with the bench), so that an older build can be measured;
//! `TALLY_BENCH_TALLY_LOG` its log filter (`warn`).
//! Under `cargo test --all-targets` it runs 20 users × 20 calls per phase
//! (settle delay 1 s) as a smoke test: float-written balances write at
//! most 1.5× the documents exact ones do, and restate no more of the past
//! (0.25 per call of margin). `@row` lines are for `scripts/bench`'s table.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use bson::{doc, Bson, Document};
use chrono::{Days, Months, NaiveDate, Utc};
use common::{benching, env};
use futures::TryStreamExt;
use mongodb::{Client, Database};
use tally::batch::seed::{seed, SeedOptions};
use tally::core::calendar::{date_label, first_of_month, Calendar};
use tally::core::money::Money;
use tally::core::reports::Kind;
use tally::core::rng::Rng;

/// The seed of each phase's random calls: both phases make the same calls.
const CALLS_SEED: u64 = 11;

fn tally_bin() -> String {
    std::env::var("TALLY_BENCH_TALLY_BIN")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tally").to_owned())
}

fn start_tally(bin: &str, uri: &str, db: &str, initial_days: u64, settle: u64) -> Child {
    Command::new(bin)
        .args(["run", "--initial-days", &initial_days.to_string()])
        .args(["--settle-seconds", &settle.to_string()])
        .env("TALLY_MONGODB_URI", uri)
        .env("TALLY_DATABASE", db)
        .env(
            "TALLY_LOG",
            std::env::var("TALLY_BENCH_TALLY_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .env("TALLY_HTTP_ADDR", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"))
}

/// What one stored output document holds of interest here.
#[derive(Clone, Copy)]
struct Stored {
    revision: i64,
    restatements: i64,
    /// Of a closed period: a day before today, a month before this month.
    past: bool,
}

/// Every output document, by (kind, user, period label in ms).
type Census = HashMap<(Kind, ObjectId, i64), Stored>;

fn int(v: Option<&Bson>) -> i64 {
    match v {
        Some(Bson::Int32(i)) => i64::from(*i),
        Some(Bson::Int64(i)) => *i,
        Some(Bson::Double(f)) => *f as i64,
        _ => 0,
    }
}

async fn census(db: &Database, today: NaiveDate) -> Census {
    let mut out = Census::new();
    for kind in Kind::ALL {
        let field = kind.date_field();
        let closed_before = match kind {
            Kind::Monthly => date_label(first_of_month(today)),
            Kind::Report | Kind::Snapshot => date_label(today),
        }
        .timestamp_millis();
        let mut cursor = db
            .collection::<Document>(kind.collection())
            .find(doc! {})
            .projection(doc! { "_id": 0, "user_id": 1, field: 1, "revision": 1, "restatements": 1 })
            .batch_size(10_000)
            .await
            .expect("census");
        while let Some(d) = cursor.try_next().await.expect("census") {
            let (Ok(user), Ok(period)) = (d.get_object_id("user_id"), d.get_datetime(field)) else {
                continue;
            };
            let period = period.timestamp_millis();
            out.insert(
                (kind, user, period),
                Stored {
                    revision: int(d.get("revision")),
                    restatements: int(d.get("restatements")),
                    past: period < closed_before,
                },
            );
        }
    }
    out
}

/// What tally wrote between two censuses.
#[derive(Default, Debug)]
struct Written {
    /// Document writes: revision increases + new documents' revisions +
    /// deleted documents.
    writes: i64,
    /// Of which on new documents (their revisions) and deletions.
    new: i64,
    deleted: i64,
    /// Per kind (Report, Snapshot, Monthly).
    by_kind: [i64; 3],
    /// Documents of closed periods that changed (new, rewritten, deleted)
    /// and the writes they took.
    past_docs: i64,
    past_writes: i64,
    /// Increase of `restatements` (changes of final documents).
    restatements: i64,
    /// Documents that changed though no call of the phase reaches them
    /// (see [`reach`]), of which of closed periods.
    outside: i64,
    outside_past: i64,
}

/// A document's key in a [`Census`].
type Key = (Kind, ObjectId, i64);

/// The documents a phase's calls change by themselves: for a transaction
/// of user U dated on day D (D ≤ today), U's reports of D through today,
/// its snapshots of D through yesterday (a closing balance moves every
/// later one) and its summaries of D's month through this month.
fn reach(calls: &[(ObjectId, NaiveDate)], today: NaiveDate) -> HashSet<Key> {
    let label = |d: NaiveDate| date_label(d).timestamp_millis();
    let mut out = HashSet::new();
    for &(user, from) in calls {
        let mut day = from;
        while day <= today {
            out.insert((Kind::Report, user, label(day)));
            if day < today {
                out.insert((Kind::Snapshot, user, label(day)));
            }
            day = day + Days::new(1);
        }
        let mut month = first_of_month(from);
        while month <= today {
            out.insert((Kind::Monthly, user, label(month)));
            month = month + Months::new(1);
        }
    }
    out
}

fn written(before: &Census, after: &Census, reach: &HashSet<Key>) -> Written {
    let mut w = Written::default();
    let kind_ix = |k: Kind| Kind::ALL.iter().position(|x| *x == k).expect("kind");
    let count = |w: &mut Written, key: &Key, n: i64, past: bool| {
        w.writes += n;
        w.by_kind[kind_ix(key.0)] += n;
        if past {
            w.past_docs += 1;
            w.past_writes += n;
        }
        if !reach.contains(key) {
            w.outside += 1;
            w.outside_past += i64::from(past);
        }
    };
    for (key, a) in after {
        let n = match before.get(key) {
            Some(b) => (a.revision - b.revision).max(0),
            None => {
                w.new += a.revision.max(1);
                a.revision.max(1)
            }
        };
        w.restatements += a.restatements - before.get(key).map_or(0, |b| b.restatements);
        if n > 0 {
            count(&mut w, key, n, a.past);
        }
    }
    for (key, b) in before {
        if !after.contains_key(key) {
            w.deleted += 1;
            count(&mut w, key, 1, b.past);
        }
    }
    w
}

/// How coin computes a balance.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arith {
    /// Exact decimal arithmetic.
    Exact,
    /// Through float64: Decimal128 → f64 → add → shortest text → Decimal128.
    Float,
}

impl Arith {
    fn add(self, balance: Money, delta: Money) -> Money {
        match self {
            Arith::Exact => balance + delta,
            Arith::Float => {
                let f = |m: Money| m.to_string().parse::<f64>().expect("f64");
                Money::from_f64(f(balance) + f(delta)).expect("finite")
            }
        }
    }
}

/// Last change event seen on the output collections, in ms since `origin`.
struct Quiet {
    origin: Instant,
    last_ms: AtomicU64,
    events: AtomicU64,
}

impl Quiet {
    fn touch(&self) {
        self.last_ms
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    fn since_last(&self) -> Duration {
        self.origin
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }

    /// Waits until tally has settled, at most `bound`: no change event on
    /// the output collections for `quiet` (counted from now at the
    /// earliest), and tally's stored checkpoint, which it saves only with
    /// nothing left to flush, covers the events up to `covered` (ms, the
    /// wall time of the last source write) and has no user waiting for the
    /// settle delay. Returns the wait and whether it settled.
    async fn settle(
        &self,
        db: &Database,
        covered: Option<i64>,
        quiet: Duration,
        bound: Duration,
    ) -> (Duration, bool) {
        let start = Instant::now();
        self.touch();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if self.since_last() >= quiet && checkpoint_done(db, covered).await {
                return (start.elapsed(), true);
            }
            if start.elapsed() >= bound {
                return (start.elapsed(), false);
            }
        }
    }
}

/// Whether tally's stored checkpoint covers the events up to `covered`
/// (ms) and lists no pending user (drift or a recheck waiting for the
/// settle delay).
async fn checkpoint_done(db: &Database, covered: Option<i64>) -> bool {
    let Ok(Some(c)) = db
        .collection::<Document>("tally_state")
        .find_one(doc! { "_id": "checkpoint" })
        .await
    else {
        return false;
    };
    let idle = c.get_array("pending").map_or(true, |p| p.is_empty());
    let reached = covered.is_none_or(|at| {
        c.get_datetime("last_event_at")
            .is_ok_and(|t| t.timestamp_millis() >= at)
    });
    idle && reached
}

/// coin's write pattern against the seeded pockets.
struct Coin<'a> {
    db: &'a Database,
    /// (user, pocket, stored balance)
    pockets: Vec<(ObjectId, ObjectId, Money)>,
    categories: Vec<ObjectId>,
    /// Wall time (ms) just before the last balance write was sent.
    last_write: Option<i64>,
}

/// What one phase did and measured.
struct Outcome {
    label: &'static str,
    calls: usize,
    elapsed: Duration,
    late: usize,
    /// Balance writes whose value had more than two decimals (float noise).
    noisy: usize,
    backdated: usize,
    settle_wait: Duration,
    settled: bool,
    events: u64,
    written: Written,
    day_changed: bool,
}

/// One API call, drawn before the phase runs.
#[derive(Clone, Copy)]
struct Call {
    /// Index into [`Coin::pockets`].
    pocket: usize,
    income: bool,
    /// Days before today of the transaction's date.
    back: u64,
    amount: Money,
    category: usize,
}

impl Coin<'_> {
    /// `n` calls from `seed`: a random pocket, an expense (70%) or an
    /// income of 1.00 to 100.99, dated now (75%) or 1 to 3 days back.
    fn draw(&self, seed: u64, n: usize) -> Vec<Call> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| Call {
                pocket: rng.below(self.pockets.len() as u64) as usize,
                income: rng.chance(30),
                back: if rng.chance(75) { 0 } else { 1 + rng.below(3) },
                amount: Money::new(rust_decimal::Decimal::new(
                    100 + rng.below(10_000) as i64,
                    2,
                )),
                category: rng.below(self.categories.len() as u64) as usize,
            })
            .collect()
    }

    /// One expense of 1.00 dated now on each user's first pocket.
    fn each_user_once(&self) -> Vec<Call> {
        let mut seen = std::collections::HashSet::new();
        (0..self.pockets.len())
            .filter(|&k| seen.insert(self.pockets[k].0))
            .map(|k| Call {
                pocket: k,
                income: false,
                back: 0,
                amount: Money::new(rust_decimal::Decimal::new(100, 2)),
                category: 0,
            })
            .collect()
    }

    /// One API call: a transaction insert, then the pocket's balance.
    /// Returns whether the balance written carries float noise, the user
    /// and the transaction's day. `last`: the
    /// phase's last call, whose balance write is then the only event of a
    /// wall-time millisecond at or after [`Coin::last_write`].
    async fn call(
        &mut self,
        c: Call,
        arith: Arith,
        last: bool,
        cal: &Calendar,
    ) -> (bool, ObjectId, NaiveDate) {
        let (user, pocket, balance) = self.pockets[c.pocket];
        let date = Utc::now() - chrono::Duration::days(c.back as i64);
        let mut tx = doc! {
            "_id": ObjectId::new(), "user_id": user,
            "type": if c.income { "income" } else { "expense" },
            "amount": c.amount.to_bson(), "category_id": self.categories[c.category],
            "date": bson::DateTime::from_millis(date.timestamp_millis()),
            "created_at": bson::DateTime::now(),
        };
        tx.insert(
            if c.income {
                "pocket_to_id"
            } else {
                "pocket_from_id"
            },
            pocket,
        );
        self.db
            .collection::<Document>("transactions")
            .insert_one(tx)
            .await
            .expect("transaction insert");
        let delta = if c.income { c.amount } else { -c.amount };
        let new = arith.add(balance, delta);
        self.pockets[c.pocket].2 = new;
        if last {
            tokio::time::sleep(Duration::from_millis(2)).await;
            self.last_write = Some(Utc::now().timestamp_millis());
        }
        self.db
            .collection::<Document>("pockets")
            .update_one(
                doc! { "_id": pocket },
                doc! { "$set": { "balance": new.to_bson(), "updated_at": bson::DateTime::now() } },
            )
            .await
            .expect("balance $set");
        (new != new.to_cents(), user, cal.day_of(date))
    }

    /// Makes `calls` at `rate`, waits until tally has settled, and counts
    /// the documents it wrote meanwhile.
    async fn phase(
        &mut self,
        label: &'static str,
        arith: Arith,
        calls: &[Call],
        pace: &Pace,
        quiet: &Quiet,
        cal: &Calendar,
    ) -> Outcome {
        let today = cal.day_of(Utc::now());
        let before = census(self.db, today).await;
        let events0 = quiet.events.load(Ordering::Relaxed);
        let (mut late, mut noisy, mut days) = (0, 0, Vec::new());
        let start = Instant::now();
        for (n, c) in calls.iter().enumerate() {
            let due = start + Duration::from_secs_f64(n as f64 / pace.rate);
            match due.checked_duration_since(Instant::now()) {
                Some(wait) => tokio::time::sleep(wait).await,
                None => late += 1,
            }
            let last = n + 1 == calls.len();
            let (noise, user, day) = self.call(*c, arith, last, cal).await;
            noisy += usize::from(noise);
            days.push((user, day));
        }
        let elapsed = start.elapsed();
        let (settle_wait, settled) = quiet
            .settle(self.db, self.last_write, pace.quiet, pace.bound)
            .await;
        let after = census(self.db, today).await;
        Outcome {
            label,
            calls: calls.len(),
            elapsed,
            late,
            noisy,
            backdated: calls.iter().filter(|c| c.back > 0).count(),
            settle_wait,
            settled,
            // The settle wait's own touch is not an event.
            events: quiet.events.load(Ordering::Relaxed) - events0 - 1,
            written: written(&before, &after, &reach(&days, today)),
            day_changed: cal.day_of(Utc::now()) != today,
        }
    }
}

/// Calls per second, and when tally counts as settled after them: no
/// change event for `quiet`, waited for at most `bound`.
struct Pace {
    rate: f64,
    quiet: Duration,
    bound: Duration,
}

impl Outcome {
    fn per_call(&self, n: i64) -> f64 {
        n as f64 / self.calls.max(1) as f64
    }

    fn print(&self) {
        let w = &self.written;
        let name = self.label;
        println!(
            "  [{name}] {} API calls in {:.2} s ({:.1}/s, {} behind schedule), {} back-dated, {} balances with float noise",
            self.calls,
            self.elapsed.as_secs_f64(),
            self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.late,
            self.backdated,
            self.noisy
        );
        println!(
            "  [{name}] settled after {:.1} s{} ({} change events on the output collections)",
            self.settle_wait.as_secs_f64(),
            if self.settled {
                ""
            } else {
                " (NOT settled: bound reached)"
            },
            self.events
        );
        println!(
            "  [{name}] documents written {:>6} = {:.2} per call (reports {}, snapshots {}, summaries {}; {} on new documents, {} deleted)",
            w.writes,
            self.per_call(w.writes),
            w.by_kind[0],
            w.by_kind[1],
            w.by_kind[2],
            w.new,
            w.deleted
        );
        println!(
            "  [{name}] past documents changed {:>6} = {:.2} per call ({} writes; restatements +{})",
            w.past_docs,
            self.per_call(w.past_docs),
            w.past_writes,
            w.restatements
        );
        println!(
            "  [{name}] changed beyond the calls' reach {:>6} documents, {} of them past",
            w.outside, w.outside_past
        );
        if self.day_changed {
            println!(
                "  [{name}] WARNING: the day changed during the phase (midnight steps counted)"
            );
        }
    }
}

fn main() {
    let benching = benching();
    let users = if benching {
        env("TALLY_BENCH_USERS", 200)
    } else {
        20
    };
    let per_user = if benching {
        env("TALLY_BENCH_TX_PER_USER", 50)
    } else {
        5
    };
    let calls = if benching {
        env("TALLY_BENCH_CALLS", 300)
    } else {
        20
    };
    let rate = if benching {
        env("TALLY_BENCH_RATE", 50) as f64
    } else {
        10.0
    };
    // Under cargo test a 1 s settle delay keeps the smoke run short.
    let settle: u64 = if benching { 2 } else { 1 };
    let initial_days: u64 = 7;
    let pace = Pace {
        rate,
        quiet: Duration::from_secs(3 * settle),
        bound: Duration::from_secs(env("TALLY_BENCH_DRAIN_SECONDS", 120) as u64),
    };
    let bin = tally_bin();
    let wall = Instant::now();
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async move {
            let mut server = support::start_server(&[], None);
            let uri = server.uri();
            let client = Client::with_uri_str(&uri).await.expect("client");
            let name = support::unique_db("bench_rewrites");
            let db = client.database(&name);
            let cal = Calendar::from_name("UTC").expect("zone");
            let today = cal.day_of(Utc::now());
            let opts = SeedOptions {
                users,
                transactions_per_user: per_user,
                from: today - Days::new(59),
                to: today,
                seed: 5,
                bulk: true,
            };
            seed(&db, &cal, &opts).await.expect("seed");
            // As an operator would: `tally init --create-source-index`.
            tally::mongo::connect::init(&db, true, true).await.expect("init");
            let mut pockets = Vec::new();
            let mut cursor = db
                .collection::<Document>("pockets")
                .find(doc! { "deleted_at": null })
                .await
                .expect("pockets");
            while let Some(d) = cursor.try_next().await.expect("pockets") {
                if let Ok(p) = tally::core::source::decode_pocket(&d) {
                    if let (Some(u), Ok(b)) = (p.user_id, p.balance) {
                        pockets.push((u, p.id, b));
                    }
                }
            }
            // Seeded balances are exact decimals: read as stored.
            pockets.sort_by_key(|p| p.1);
            let categories: Vec<ObjectId> = db
                .collection::<Document>("user_categories")
                .find(doc! {})
                .await
                .expect("categories")
                .try_collect::<Vec<Document>>()
                .await
                .expect("categories")
                .iter()
                .filter_map(|d| d.get_object_id("_id").ok())
                .collect();
            assert!(!pockets.is_empty() && !categories.is_empty(), "seeded");

            let started = Instant::now();
            let mut tally = start_tally(&bin, &uri, &name, initial_days, settle);
            common::wait_started(&db).await;
            let startup = started.elapsed();

            // Change events on the output collections tell when tally is
            // quiet; pushed, not polled.
            let quiet = Arc::new(Quiet {
                origin: Instant::now(),
                last_ms: AtomicU64::new(0),
                events: AtomicU64::new(0),
            });
            let mut watchers = Vec::new();
            for kind in Kind::ALL {
                let mut stream = db
                    .collection::<Document>(kind.collection())
                    .watch()
                    .await
                    .expect("watch output");
                let quiet = quiet.clone();
                watchers.push(tokio::spawn(async move {
                    while let Some(_event) = stream.try_next().await.expect("output events") {
                        quiet.touch();
                    }
                }));
            }
            let (first_settle, first_settled) =
                quiet.settle(&db, None, pace.quiet, pace.bound).await;
            assert!(first_settled, "tally did not settle after its start");

            let mut coin = Coin {
                db: &db,
                pockets,
                categories,
                last_write: None,
            };
            // A first call on each user, not counted: the first
            // recomputation of a user after the start may write documents
            // that the start did not (before the managed start), once.
            let warm = coin.each_user_once();
            let warm = coin
                .phase("warm-up", Arith::Exact, &warm, &pace, &quiet, &cal)
                .await;
            let plan = coin.draw(CALLS_SEED, calls);
            let exact = coin
                .phase("exact", Arith::Exact, &plan, &pace, &quiet, &cal)
                .await;
            let float = coin
                .phase("float", Arith::Float, &plan, &pace, &quiet, &cal)
                .await;
            for w in watchers {
                w.abort();
            }
            let _ = Command::new("kill")
                .args(["-TERM", &tally.id().to_string()])
                .status();
            let status = tally.wait().expect("tally exits");

            let per = |o: &Outcome| o.per_call(o.written.writes);
            let past = |o: &Outcome| o.per_call(o.written.past_docs);
            let ratio = per(&float) / per(&exact).max(1e-9);
            println!(
                "rewrites bench: {users} users × {per_user} transactions seeded; tally `run --initial-days {initial_days} --settle-seconds {settle}` ({bin})"
            );
            println!(
                "  tally start-up {:.2} s, settled {:.1} s after",
                startup.as_secs_f64(),
                first_settle.as_secs_f64()
            );
            println!(
                "  two phases of {calls} API calls at {rate}/s, the same calls; settled = no output change for {} s and a checkpoint past the last write with nothing pending",
                pace.quiet.as_secs()
            );
            println!("  warm-up (not counted): one call on each user first");
            warm.print();
            exact.print();
            float.print();
            println!(
                "  documents written per API call: exact {:.2}, float {:.2} (float/exact {ratio:.2}); past documents per call: exact {:.2}, float {:.2}",
                per(&exact),
                per(&float),
                past(&exact),
                past(&float)
            );
            println!(
                "  tally exit on SIGTERM: {status}; {:.1} s in all",
                wall.elapsed().as_secs_f64()
            );

            println!(
                "@info rewrites bench: {users} users × {per_user} transactions seeded, `tally run --initial-days {initial_days} --settle-seconds {settle}` ({bin}); after a warm-up call on each user, two phases of {calls} API calls at {rate}/s (a transaction, one in four back-dated 1–3 days, then the pocket's balance `$set`), the balances exact, then through float64 as coin computes them ({} of {calls} with noise); documents written = revision increases + new documents' revisions, read once tally settled; the calls' reach = what a transaction changes by itself (its user's reports from its day on, snapshots from its day to yesterday, summaries from its month on)",
                float.noisy
            );
            let section = common::REWRITES;
            let beyond = |o: &Outcome| match o.written.outside {
                0 => "none beyond the calls' reach".to_owned(),
                n => format!(
                    "{n} documents beyond the calls' reach ({} past)",
                    o.written.outside_past
                ),
            };
            let drift = |o: &Outcome| {
                if o.written.outside_past > exact.written.outside_past {
                    format!("float noise read as drift: {}", beyond(o))
                } else {
                    format!("the calls' own documents, as with exact balances: {}", beyond(o))
                }
            };
            let value = |o: &Outcome| {
                format!(
                    "**{:.2}** ({} writes in {} calls: reports {}, snapshots {}, summaries {})",
                    per(o),
                    o.written.writes,
                    o.calls,
                    o.written.by_kind[0],
                    o.written.by_kind[1],
                    o.written.by_kind[2],
                )
            };
            common::row(
                section,
                "rewrites: documents written per API call, exact balances",
                &value(&exact),
                &format!("the calls' own documents: today's report and summary; a back-dated one also its day's report and every later report and snapshot; {}", beyond(&exact)),
            );
            common::row(
                section,
                "rewrites: documents written per API call, float-written balances (coin)",
                &value(&float),
                &drift(&float),
            );
            let past_value = |o: &Outcome| {
                format!(
                    "**{:.2}** ({} documents, {} writes, restatements +{})",
                    past(o),
                    o.written.past_docs,
                    o.written.past_writes,
                    o.written.restatements
                )
            };
            common::row(
                section,
                "rewrites: past documents (closed days) rewritten per API call, exact balances",
                &past_value(&exact),
                &format!(
                    "the back-dated calls ({} of {}); {}",
                    exact.backdated,
                    exact.calls,
                    beyond(&exact)
                ),
            );
            common::row(
                section,
                "rewrites: past documents (closed days) rewritten per API call, float-written balances",
                &past_value(&float),
                &drift(&float),
            );
            common::row(
                section,
                "rewrites: documents written per call, float / exact",
                &format!("**{ratio:.2}**"),
                &drift(&float),
            );

            assert!(
                warm.settled && exact.settled && float.settled,
                "tally settled after each phase"
            );
            assert!(exact.written.writes > 0, "the exact phase wrote documents");
            assert!(float.noisy > 0, "some float-written balances carry noise");
            if !benching {
                assert!(
                    ratio <= 1.5,
                    "float-written balances rewrite {ratio:.2}× the documents of exact ones"
                );
                assert!(
                    past(&float) <= past(&exact) + 0.25,
                    "float-written balances restate the past: {:.2} past documents per call, exact {:.2}",
                    past(&float),
                    past(&exact)
                );
            }
            assert!(status.success(), "tally exits cleanly: {status}");
            server.stop();
        });
}
