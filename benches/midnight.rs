//! The nightly steps of `tally run` at scale: how long the 23:59 reports,
//! 00:00 snapshots and 00:01 monthly steps take when the state is already
//! in memory, against the time the same server takes to bulk-insert the
//! very documents the snapshot step wrote (the floor no design can beat).
//!
//! Run: `cargo bench --bench midnight` (defaults: 10,000 users × 6
//! transactions in November; `TALLY_BENCH_USERS`, `TALLY_BENCH_TX_PER_USER`
//! change them). tally's clock starts at 30 November 23:59:45 (UTC) with
//! the steps at 23:59:50, 00:00:00 and 00:00:05, so its first start builds
//! the window and the three steps of the night follow within seconds (or
//! run as catch-up at start, when the start takes longer: the same work).
//! Under `cargo test` it runs 50 users as a smoke test.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bson::{doc, Document};
use chrono::NaiveDate;
use futures::TryStreamExt;
use mongodb::Client;
use tally::batch::seed::{seed, SeedOptions};
use tally::core::calendar::{date_label, Calendar};
use tally::core::reports::Kind;

/// The cheapest bulk operation of a step's documents.
#[derive(Clone, Copy, PartialEq)]
enum Floor {
    /// Inserted anew.
    Insert,
    /// Marked final by one `updateMany` (`$set` of the flag).
    Flag,
    /// The same, inside a transaction.
    FlagInTransaction,
    /// As `tally` marks them (batch/finalize.rs `mark_final`: a pipeline
    /// that also counts the revision), inside a transaction.
    AsTally,
}

/// Copies the stored documents of (kind, period) into a scratch collection
/// with the output's indexes, then times `how`; (documents, time).
async fn floor(
    db: &mongodb::Database,
    kind: Kind,
    period: NaiveDate,
    how: Floor,
) -> (usize, Duration) {
    let label = date_label(period);
    let docs: Vec<Document> = db
        .collection::<Document>(kind.collection())
        .find(doc! { kind.date_field(): label })
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("read");
    let copies: Vec<Document> = docs
        .iter()
        .map(|d| {
            let mut d = d.clone();
            d.remove("_id");
            d.insert(kind.final_field(), false);
            d
        })
        .collect();
    let name = format!("bench_floor_{}", kind.collection());
    let scratch = db.collection::<Document>(&name);
    scratch.drop().await.expect("drop scratch");
    for keys in [
        doc! { "user_id": 1, kind.date_field(): 1 },
        doc! { kind.date_field(): 1 },
    ] {
        let unique = keys.len() == 2;
        let model = mongodb::IndexModel::builder()
            .keys(keys)
            .options(
                mongodb::options::IndexOptions::builder()
                    .unique(unique)
                    .build(),
            )
            .build();
        scratch.create_index(model).await.expect("scratch index");
    }
    let insert = || async {
        for chunk in copies.chunks(1000) {
            scratch
                .insert_many(chunk.to_vec())
                .ordered(false)
                .await
                .expect("insert");
        }
    };
    if how == Floor::Insert {
        let t = Instant::now();
        insert().await;
        return (copies.len(), t.elapsed());
    }
    insert().await;
    let filter = doc! { kind.date_field(): label };
    let flag = doc! { "$set": { kind.final_field(): true } };
    let t = Instant::now();
    match how {
        Floor::Flag => {
            scratch.update_many(filter, flag).await.expect("updateMany");
        }
        Floor::FlagInTransaction | Floor::AsTally => {
            let mut s = db.client().start_session().await.expect("session");
            s.start_transaction().await.expect("transaction");
            let r = if how == Floor::AsTally {
                let at = bson::DateTime::now();
                let pipeline = vec![doc! { "$set": {
                    kind.final_field(): true, "updated_at": at, "generated_at": at,
                    "revision": { "$add": [ { "$ifNull": ["$revision", 0] }, 1 ] },
                } }];
                scratch.update_many(filter, pipeline).session(&mut s).await
            } else {
                scratch.update_many(filter, flag).session(&mut s).await
            };
            r.expect("updateMany");
            s.commit_transaction().await.expect("commit");
        }
        Floor::Insert => unreachable!("returned above"),
    }
    (copies.len(), t.elapsed())
}

/// `elapsed_ms`, `documents` and `closed_only` of the "Finalized." line of
/// (kind, period) in `log`.
fn step(log: &str, kind: &str, period: &str) -> Option<(u64, u64, u64)> {
    log.lines().find_map(|l| common::finalized(l, kind, period))
}

fn main() {
    let benching = common::benching();
    let users = if benching {
        common::env("TALLY_BENCH_USERS", 10_000)
    } else {
        50
    };
    let per_user = common::env("TALLY_BENCH_TX_PER_USER", 6);
    let day = |s: &str| s.parse::<NaiveDate>().expect("date");
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async move {
            let mut server = support::start_server(&[], None);
            let uri = server.uri();
            let client = Client::with_uri_str(&uri).await.expect("client");
            let name = support::unique_db("bench_midnight");
            let db = client.database(&name);
            let cal = Calendar::from_name("UTC").expect("zone");
            let opts = SeedOptions {
                users,
                transactions_per_user: per_user,
                from: day("2026-11-01"),
                to: day("2026-11-30"),
                seed: 5,
                bulk: true,
            };
            let seeded = seed(&db, &cal, &opts).await.expect("seed");
            tally::mongo::connect::init(&db, true, true).await.expect("init");

            let log_path = std::env::temp_dir().join(format!("{name}.log"));
            let log = std::fs::File::create(&log_path).expect("log file");
            let started = Instant::now();
            let mut tally = Command::new(common::tally_bin())
                .args(["run", "--initial-days", "2"])
                .args(["--daily-report-at", "23:59:50", "--snapshot-at", "00:00:00"])
                .args(["--monthly-at", "00:00:05"])
                .env("TALLY_MONGODB_URI", &uri)
                .env("TALLY_DATABASE", &name)
                .env("TALLY_TIMEZONE", "UTC")
                .env("TALLY_NOW", "2026-11-30T23:59:45Z")
                .env("TALLY_LOG", "info")
                .env("TALLY_HTTP_ADDR", "off")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("tally starts");
            let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
            let deadline = Instant::now() + Duration::from_secs(900);
            while step(&read(), "monthly", "2026-11-01").is_none() {
                assert!(Instant::now() < deadline, "no monthly step:\n{}", read());
                assert!(
                    tally.try_wait().expect("wait").is_none(),
                    "tally exited:\n{}",
                    read()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let night = started.elapsed();
            let status_file = std::fs::read_to_string(format!("/proc/{}/status", tally.id()))
                .unwrap_or_default();
            let peak_rss_kib: u64 = status_file
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let _ = Command::new("kill")
                .args(["-TERM", &tally.id().to_string()])
                .status();
            let status = tally.wait().expect("tally exits");
            let log = read();

            // The floors: the same server doing the cheapest bulk operation
            // for each step's documents, in scratch collections with the
            // same indexes: one `updateMany` setting the flag (reports,
            // summaries: the step only marks them final) and bare inserts
            // (snapshots: new documents).
            let reports_floor = floor(&db, Kind::Report, day("2026-11-30"), Floor::Flag).await;
            let snap_floor = floor(&db, Kind::Snapshot, day("2026-11-30"), Floor::Insert).await;
            let month_floor = floor(&db, Kind::Monthly, day("2026-11-01"), Floor::Flag).await;
            // Where a step's time goes beyond the floor: the same update in
            // a transaction (tally's fence), and as tally writes it (a
            // pipeline that also counts the revision, in a transaction).
            let month_in_txn = floor(&db, Kind::Monthly, day("2026-11-01"), Floor::FlagInTransaction).await;
            let month_as_tally = floor(&db, Kind::Monthly, day("2026-11-01"), Floor::AsTally).await;

            let (reports_ms, reports, reports_closed) =
                step(&log, "reports", "2026-11-30").expect("reports step");
            let (snap_ms, snap, _) = step(&log, "snapshots", "2026-11-30").expect("snapshots step");
            let (month_ms, month, month_closed) =
                step(&log, "monthly", "2026-11-01").expect("monthly step");
            println!(
                "midnight bench: {} users, {} transactions (November), steps of 30 Nov → 1 Dec",
                seeded.users, seeded.transactions
            );
            println!(
                "@info night bench: {} users, {} transactions in November (UTC), tally run's steps of 30 Nov 23:59, 1 Dec 00:00 and 00:01 from its in-memory window (the Finalized. lines' elapsed_ms); floors in scratch collections with the outputs' indexes, after the night, on the same server",
                seeded.users, seeded.transactions
            );
            let steps = [
                ("23:59 reports final", reports_ms, reports, reports_closed, reports_floor, "one updateMany of the flag"),
                ("00:00 snapshots", snap_ms, snap, 0, snap_floor, "bare inserts"),
                ("00:01 monthly summaries final", month_ms, month, month_closed, month_floor, "one updateMany of the flag"),
            ];
            for (label, ms, docs, closed, (n, floor), how) in steps {
                let secs = ms as f64 / 1e3;
                let ratio = secs / floor.as_secs_f64().max(1e-9);
                println!(
                    "  {label:<30} {docs:>6} documents ({closed} only marked final) {secs:>8.2} s; floor ({how} of the same {n}) {:>6.2} s → {ratio:.2}×",
                    floor.as_secs_f64()
                );
                common::row(
                    common::NIGHT,
                    &format!("night at {users} users: {label} ({docs} documents, {closed} only marked final); target ≤ 1.2× the floor"),
                    &format!("{secs:.2} s vs {:.2} s = **{ratio:.2}×** ({})", floor.as_secs_f64(), if ratio <= 1.2 { "met" } else { "missed" }),
                    &format!("the server: floor = {how} of the same {n} documents, same indexes"),
                );
            }
            let (n, t) = month_in_txn;
            common::row(
                common::NIGHT,
                &format!("night at {users} users: the monthly floor's updateMany inside a transaction"),
                &format!("{:.2} s for {n} documents", t.as_secs_f64()),
                "the server's transaction",
            );
            let (n, t) = month_as_tally;
            common::row(
                common::NIGHT,
                &format!("night at {users} users: the monthly update as tally sends it (pipeline counting the revision) in a transaction"),
                &format!("{:.2} s for {n} documents", t.as_secs_f64()),
                "the server's pipeline update",
            );
            println!(
                "  whole run (first-start window build + the night)  {:.1} s; tally peak RSS {:.0} MiB",
                night.as_secs_f64(),
                peak_rss_kib as f64 / 1024.0
            );
            let snapshots = snap_floor.0;
            assert!(status.success(), "clean exit: {status}");
            assert_eq!(snap as usize, snapshots, "the step wrote the snapshots");
            assert!(snap > 0 && month > 0);
            server.stop();
        });
}
