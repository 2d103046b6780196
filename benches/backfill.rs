//! Backfill end to end against a real SecantusDB, as a ratio to a bare
//! cursor scan of the same transactions from the same server in the same run.
//!
//! Run: `cargo bench --bench backfill` (defaults: 600 users × 40
//! transactions over 60 days; `TALLY_BENCH_USERS`, `TALLY_BENCH_TX_PER_USER`
//! change them). Under `cargo test` it runs a tiny dataset once as a smoke
//! test. Figures are recorded in BENCHMARKS.md.
//!
//! Besides wall-clock times it prints the CPU time the server process and
//! this process spent in each phase (from `/proc/<pid>/stat`; the server is
//! found by its port, so only for a local server), because SecantusDB is a
//! Python server that does one thing at a time: its CPU time is the floor
//! of every phase.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use bson::{doc, Document};
use chrono::{Days, NaiveDate, TimeZone, Utc};
use common::{bare_scan, benching, env, Meter};
use mongodb::Client;
use tally::batch::backfill::backfill;
use tally::batch::scan::Range;
use tally::batch::seed::{seed, SeedOptions};
use tally::core::calendar::{date_label, first_of_month, Calendar};
use tally::core::reports::{earliest_dependency, Kind};
use tally::mongo::bulk;
use tally::plan::write::Write;

fn main() {
    let (users, per_user) = if benching() {
        (
            env("TALLY_BENCH_USERS", 600),
            env("TALLY_BENCH_TX_PER_USER", 40),
        )
    } else {
        (10, 5)
    };
    tokio::runtime::Runtime::new().expect("runtime").block_on(async move {
        let uri = support::uri();
        let meter = Meter::new(&uri);
        let client = Client::with_uri_str(&uri).await.expect("client");
        let db = client.database(&support::unique_db("bench_bf"));
        let cal = Calendar::from_name("America/New_York").expect("zone");
        let to: NaiveDate = "2026-03-01".parse().expect("date");
        let from = to - Days::new(59);
        let now = Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap();
        let opts = SeedOptions { users, transactions_per_user: per_user, from, to, seed: 1, bulk: true };
        let seeded = seed(&db, &cal, &opts).await.expect("seed");
        tally::mongo::connect::init(&db, true, false).await.expect("init");

        let start = cal.day_start(earliest_dependency(from));
        let filter = doc! { "date": { "$gte": bson::DateTime::from_millis(start.timestamp_millis()) } };
        // Warm the server's cache once, then measure.
        bare_scan(&db, "transactions", filter.clone(), None).await;
        let (scanned, scan) = meter.run(bare_scan(&db, "transactions", filter.clone(), None)).await;
        let (_, sorted_scan) =
            meter.run(bare_scan(&db, "transactions", filter.clone(), Some("date"))).await;

        let range = Range { from, to, kinds: Kind::ALL.to_vec() };
        let (first, first_phase) = meter.run(backfill(&db, cal, range.clone(), now, false)).await;
        let first = first.expect("backfill");
        // What the second run reads besides the transactions: the stored
        // documents of the range, read the way the scan reads them.
        let (_, outputs) = meter
            .run(async {
                for kind in Kind::ALL {
                    let (lo, hi) = match kind {
                        Kind::Monthly => (first_of_month(from), first_of_month(to)),
                        _ => (from, to),
                    };
                    let f = doc! { kind.date_field(): { "$gte": date_label(lo), "$lte": date_label(hi) } };
                    bare_scan(&db, kind.collection(), f, Some(kind.date_field())).await;
                }
            })
            .await;
        let (second, second_phase) = meter.run(backfill(&db, cal, range, now, false)).await;
        let second = second.expect("backfill");
        assert!(first.writes.inserted > 0 && second.writes.changed() == 0, "second run writes nothing");
        assert_eq!(first.writes.errors + first.writes.conflicts, 0, "{:?}", first.writes);

        // An insert whose key is taken is not written: a conflict, no
        // error, and the stored document stays as it is.
        let reports = db.collection::<Document>(Kind::Report.collection());
        let mut stored = reports.find_one(doc! {}).await.expect("read").expect("a report");
        stored.remove("_id");
        let user = stored.get_object_id("user_id").expect("user_id");
        let period = tally::core::calendar::label_date(*stored.get_datetime("report_date").expect("report_date"));
        let stats = bulk::execute(&db, vec![Write::Upsert { kind: Kind::Report, user, period, set: bson::RawDocumentBuf::from_document(&stored).expect("encodes"), if_revision: None, leaves: None }], None)
            .await
            .expect("execute");
        assert_eq!((stats.inserted, stats.updated, stats.conflicts, stats.errors), (0, 0, 1, 0), "{stats:?}");

        let bare = scan.wall.as_secs_f64();
        let own = first.elapsed.saturating_sub(first.writes.server_time).as_secs_f64();
        let second_s = second.elapsed.as_secs_f64();
        let reads = bare + outputs.wall.as_secs_f64();
        println!("backfill bench: {} users, {} transactions seeded, {scanned} scanned, {} documents", users, seeded.transactions, first.documents);
        println!("  server process: {}", meter.server_pid.as_deref().map_or("not local (no CPU figures)".to_owned(), |p| format!("pid {p}")));
        println!("  bare scan (unsorted)                  {:>8.3} s   {}", bare, scan.cpu());
        println!("  bare scan (sorted as the scan reads)  {:>8.3} s   {}", sorted_scan.wall.as_secs_f64(), sorted_scan.cpu());
        println!("  backfill, first run (all inserts)     {:>8.3} s   {}", first.elapsed.as_secs_f64(), first_phase.cpu());
        println!("    of which server taking writes       {:>8.3} s", first.writes.server_time.as_secs_f64());
        println!("    backfill minus writes               {:>8.3} s   = {:.2}× the bare scan", own, own / bare);
        println!("  bare read of the stored documents     {:>8.3} s   {}", outputs.wall.as_secs_f64(), outputs.cpu());
        println!("  backfill, second run (no writes)      {:>8.3} s   {}", second_s, second_phase.cpu());
        println!("    = {:.2}× the bare scan, {:.2}× bare scan + bare read of the stored documents", second_s / bare, second_s / reads);
        client.database(db.name()).drop().await.ok();
    });
}
