//! Backfill end to end against a real SecantusDB, as a ratio to a bare
//! cursor scan of the same transactions from the same server in the same run.
//!
//! Run: `cargo bench --bench backfill` (defaults: 600 users × 40
//! transactions over 60 days; `TALLY_BENCH_USERS`, `TALLY_BENCH_TX_PER_USER`
//! change them). Under `cargo test` it runs a tiny dataset once as a smoke
//! test. Figures are recorded in BENCHMARKS.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bson::{doc, Document};
use chrono::{Days, NaiveDate, TimeZone, Utc};
use futures::TryStreamExt;
use mongodb::{Client, Database};
use tally::batch::backfill;
use tally::calendar::Calendar;
use tally::reports::{earliest_dependency, Kind};
use tally::scan::Range;
use tally::seed::{seed, SeedOptions};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Reads every transaction the backfill reads, doing nothing with them.
async fn bare_scan(db: &Database, filter: Document, sorted: bool) -> (Duration, u64) {
    let started = Instant::now();
    let coll = db.collection::<Document>("transactions");
    let mut find = coll.find(filter).batch_size(10_000);
    if sorted {
        find = find.sort(doc! { "user_id": 1, "date": 1 });
    }
    let mut cursor = find.await.expect("scan");
    let mut n = 0;
    while let Some(d) = cursor.try_next().await.expect("scan") {
        n += u64::from(!d.is_empty());
    }
    (started.elapsed(), n)
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let (users, per_user) = if benching {
        (
            env("TALLY_BENCH_USERS", 600),
            env("TALLY_BENCH_TX_PER_USER", 40),
        )
    } else {
        (10, 5)
    };
    tokio::runtime::Runtime::new().expect("runtime").block_on(async move {
        let client = Client::with_uri_str(support::uri()).await.expect("client");
        let db = client.database(&support::unique_db("bench_bf"));
        let cal = Calendar::from_name("America/New_York").expect("zone");
        let to: NaiveDate = "2026-03-01".parse().expect("date");
        let from = to - Days::new(59);
        let now = Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap();
        let opts = SeedOptions { users, transactions_per_user: per_user, from, to, seed: 1, bulk: true };
        let seeded = seed(&db, &cal, &opts).await.expect("seed");
        tally::store::init(&db, true, false).await.expect("init");

        let start = cal.day_start(earliest_dependency(from));
        let filter = doc! { "date": { "$gte": bson::DateTime::from_millis(start.timestamp_millis()) } };
        // Warm the server's cache once, then measure.
        bare_scan(&db, filter.clone(), false).await;
        let (scan, scanned) = bare_scan(&db, filter.clone(), false).await;
        let (sorted_scan, _) = bare_scan(&db, filter, true).await;

        let range = Range { from, to, kinds: Kind::ALL.to_vec() };
        let first = backfill(&db, cal, range.clone(), now, false).await.expect("backfill");
        let second = backfill(&db, cal, range, now, false).await.expect("backfill");
        assert!(first.writes.inserted > 0 && second.writes.changed() == 0, "second run writes nothing");

        let own = first.elapsed.saturating_sub(first.writes.server_time);
        println!("backfill bench: {} users, {} transactions seeded, {scanned} scanned, {} documents", users, seeded.transactions, first.documents);
        println!("  bare scan (unsorted)               {:>8.3} s", scan.as_secs_f64());
        println!("  bare scan (sorted user_id, date)   {:>8.3} s", sorted_scan.as_secs_f64());
        println!("  backfill, first run (all inserts)  {:>8.3} s", first.elapsed.as_secs_f64());
        println!("    of which server taking writes    {:>8.3} s", first.writes.server_time.as_secs_f64());
        println!("    backfill minus writes            {:>8.3} s  = {:.2}× the bare scan", own.as_secs_f64(), own.as_secs_f64() / scan.as_secs_f64());
        println!("  backfill, second run (no writes)   {:>8.3} s  = {:.2}× the bare scan (also reads stored documents)", second.elapsed.as_secs_f64(), second.elapsed.as_secs_f64() / scan.as_secs_f64());
        client.database(db.name()).drop().await.ok();
    });
}
