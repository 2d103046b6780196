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
            let mut tally = Command::new(env!("CARGO_BIN_EXE_tally"))
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

            // The floor: the same server inserting the snapshot step's
            // documents in bulk, into a scratch collection.
            let snapshots: Vec<Document> = db
                .collection::<Document>("daily_financial_snapshots")
                .find(doc! { "snapshot_date": date_label(day("2026-11-30")) })
                .await
                .expect("find")
                .try_collect()
                .await
                .expect("read");
            let copies: Vec<Document> = snapshots
                .iter()
                .map(|d| {
                    let mut d = d.clone();
                    d.remove("_id");
                    d
                })
                .collect();
            let scratch = db.collection::<Document>("bench_scratch");
            let t = Instant::now();
            for chunk in copies.chunks(1000) {
                scratch
                    .insert_many(chunk.to_vec())
                    .ordered(false)
                    .await
                    .expect("insert");
            }
            let bare = t.elapsed();

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
                "  23:59 reports final     {reports:>6} documents  {:>8.2} s  ({reports_closed} only marked final)",
                reports_ms as f64 / 1e3
            );
            println!(
                "  00:00 snapshots         {snap:>6} documents  {:>8.2} s",
                snap_ms as f64 / 1e3
            );
            println!(
                "  00:01 monthly summaries {month:>6} documents  {:>8.2} s  ({month_closed} only marked final)",
                month_ms as f64 / 1e3
            );
            println!(
                "  bare bulk insert of the same {} snapshots  {:>8.2} s → snapshot step = {:.2}× the server's bare write time",
                copies.len(),
                bare.as_secs_f64(),
                snap_ms as f64 / 1e3 / bare.as_secs_f64().max(1e-9)
            );
            println!(
                "  whole run (first-start window build + the night)  {:.1} s; tally peak RSS {:.0} MiB",
                night.as_secs_f64(),
                peak_rss_kib as f64 / 1024.0
            );
            assert!(status.success(), "clean exit: {status}");
            assert_eq!(snap as usize, snapshots.len(), "the step wrote the snapshots");
            assert!(snap > 0 && month > 0);
            server.stop();
        });
}
