//! `tally run` under load: latency from a source write to the stored report
//! that reflects it, and the events per second applied, against SecantusDB.
//!
//! Run: `cargo bench --bench tail` (defaults: 2,000 users × 50 transactions
//! seeded (tally starts with `--initial-days 2`, so its first-start backfill
//! stays short), then the API's write pattern — a transaction, then its pocket
//! balance — at 100 API calls per second for 30 s; `TALLY_BENCH_USERS`,
//! `TALLY_BENCH_TX_PER_USER`, `TALLY_BENCH_RATE`, `TALLY_BENCH_SECONDS`
//! change them; `TALLY_BENCH_RATE=0` sends as fast as the server takes
//! them; `TALLY_BENCH_WORKERS` concurrent callers, default 16). Every call is traced: its latency is the time from the
//! transaction insert until a report listing it is written (seen through a
//! change stream on the reports, so tracing adds no polling load). Under
//! `cargo test` it runs a tiny load once as a smoke test.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use bson::{doc, Document};
use chrono::Utc;
use futures::TryStreamExt;
use mongodb::options::FullDocumentType;
use mongodb::{Client, Database};
use tally::calendar::Calendar;
use tally::money::Money;
use tally::seed::{seed, Rng, SeedOptions};
use tokio::sync::Mutex;

fn env(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn start_tally(uri: &str, db: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["run", "--initial-days", "2"])
        .env("TALLY_MONGODB_URI", uri)
        .env("TALLY_DATABASE", db)
        .env("TALLY_LOG", "warn")
        .env("TALLY_HTTP_ADDR", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("tally starts")
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn server_pid(port: u16) -> Option<u32> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("secantusd.*--port {port}")])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .max()
}

async fn wait_started(db: &Database) {
    for _ in 0..6000 {
        if let Ok(Some(_)) = db
            .collection::<Document>("tally_state")
            .find_one(doc! {})
            .await
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("tally never wrote its checkpoint");
}

/// Every transaction id a report lists.
fn listed_ids(report: &Document) -> Vec<ObjectId> {
    let mut out = Vec::new();
    for p in report
        .get_array("transactions_by_pocket")
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let Some(p) = p.as_document() else { continue };
        for t in p
            .get_array("transactions")
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            if let Some(id) = t
                .as_document()
                .and_then(|t| t.get_object_id("transaction_id").ok())
            {
                out.push(id);
            }
        }
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let users = if benching {
        env("TALLY_BENCH_USERS", 2000.0)
    } else {
        20.0
    } as usize;
    let per_user = if benching {
        env("TALLY_BENCH_TX_PER_USER", 50.0)
    } else {
        5.0
    } as usize;
    let rate = if benching {
        env("TALLY_BENCH_RATE", 100.0)
    } else {
        10.0
    };
    let seconds = if benching {
        env("TALLY_BENCH_SECONDS", 30.0)
    } else {
        3.0
    };
    tokio::runtime::Runtime::new().expect("runtime").block_on(async move {
        let mut server = support::start_server(&[], None);
        let uri = server.uri();
        let client = Client::with_uri_str(&uri).await.expect("client");
        let name = support::unique_db("bench_tail");
        let db = client.database(&name);
        let cal = Calendar::from_name("UTC").expect("zone");
        let today = cal.day_of(Utc::now());
        let opts = SeedOptions {
            users,
            transactions_per_user: per_user,
            from: today - chrono::Days::new(59),
            to: today,
            seed: 3,
            bulk: true,
        };
        seed(&db, &cal, &opts).await.expect("seed");
        // As an operator would: `tally init --create-source-index`.
        tally::store::init(&db, true, true).await.expect("init");
        let mut pockets: Vec<(ObjectId, ObjectId, Money)> = Vec::new();
        let mut cursor = db.collection::<Document>("pockets").find(doc! { "deleted_at": null }).await.unwrap();
        while let Some(d) = cursor.try_next().await.unwrap() {
            if let Ok(p) = tally::source::decode_pocket(&d) {
                if let (Some(u), Ok(b)) = (p.user_id, p.balance) {
                    pockets.push((u, p.id, b));
                }
            }
        }

        let started = Instant::now();
        let mut tally = start_tally(&uri, &name);
        wait_started(&db).await;
        let startup = started.elapsed();
        let tally_cpu0 = cpu_seconds(tally.id());
        let spid = server_pid(server.port());
        let server_cpu0 = spid.map_or(0.0, cpu_seconds);

        // Watch tally's report writes; a write is reflected when a report
        // listing its transaction id comes by. Pushed, not polled, so the
        // measurement adds no load to the server.
        let written_at: Arc<Mutex<HashMap<ObjectId, Instant>>> = Arc::default();
        let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let mut watch = db
            .collection::<Document>("daily_financial_reports")
            .watch()
            .full_document(FullDocumentType::UpdateLookup)
            .await
            .expect("watch reports");
        let tracer = {
            let (written_at, latencies) = (written_at.clone(), latencies.clone());
            tokio::spawn(async move {
                while let Some(event) = watch.try_next().await.expect("report events") {
                    let Some(report) = event.full_document else { continue };
                    let mut pending = written_at.lock().await;
                    for id in listed_ids(&report) {
                        if let Some(at) = pending.remove(&id) {
                            latencies.lock().await.push(at.elapsed());
                        }
                    }
                }
            })
        };
        // The API's callers: `workers` concurrent tasks, each owning the
        // pockets whose index it is congruent to (a pocket's balance has
        // one writer), each sending its share of the calls on schedule.
        // Rate 0: as fast as the server takes them.
        let workers = env("TALLY_BENCH_WORKERS", 16.0) as usize;
        let calls = if rate > 0.0 { (rate * seconds) as usize } else { usize::MAX };
        let period = if rate > 0.0 { Duration::from_secs_f64(1.0 / rate) } else { Duration::ZERO };
        let load_start = Instant::now();
        let stop_at = load_start + Duration::from_secs_f64(seconds);
        let mut tasks = Vec::new();
        for w in 0..workers {
            let db = db.clone();
            let written_at = written_at.clone();
            let mut mine: Vec<(ObjectId, ObjectId, Money)> = pockets
                .iter()
                .enumerate()
                .filter(|(i, _)| i % workers == w)
                .map(|(_, p)| *p)
                .collect();
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng::new(11 + w as u64);
                let (mut sent, mut late) = (0usize, 0usize);
                let mut i = w;
                while i < calls && !mine.is_empty() {
                    if rate > 0.0 {
                        let due = load_start + period * i as u32;
                        match due.checked_duration_since(Instant::now()) {
                            Some(wait) => tokio::time::sleep(wait).await,
                            None if Instant::now() > due + Duration::from_millis(100) => late += 1,
                            None => {}
                        }
                    } else if Instant::now() >= stop_at {
                        break;
                    }
                    let k = rng.below(mine.len() as u64) as usize;
                    let (user, pocket, balance) = mine[k];
                    let amount = Money::new(rust_decimal::Decimal::new(100 + rng.below(10_000) as i64, 2));
                    let id = ObjectId::new();
                    written_at.lock().await.insert(id, Instant::now());
                    db.collection::<Document>("transactions")
                        .insert_one(doc! {
                            "_id": id, "user_id": user, "type": "expense", "amount": amount.to_bson(),
                            "pocket_from_id": pocket, "date": bson::DateTime::now(),
                        })
                        .await
                        .unwrap();
                    mine[k].2 = balance - amount;
                    db.collection::<Document>("pockets")
                        .update_one(doc! { "_id": pocket }, doc! { "$set": { "balance": mine[k].2.to_bson() } })
                        .await
                        .unwrap();
                    sent += 1;
                    i += workers;
                }
                (sent, late)
            }));
        }
        let (mut calls, mut late) = (0usize, 0usize);
        for t in tasks {
            let (s, l) = t.await.expect("worker");
            calls += s;
            late += l;
        }
        let load_elapsed = load_start.elapsed();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !written_at.lock().await.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracer.abort();
        let tally_cpu = cpu_seconds(tally.id()) - tally_cpu0;
        let server_cpu = spid.map_or(0.0, cpu_seconds) - server_cpu0;
        let _ = Command::new("kill").args(["-TERM", &tally.id().to_string()]).status();
        let status = tally.wait().expect("tally exits");
        let mut l = latencies.lock().await.clone();
        l.sort();
        let traced = calls;
        println!("tail bench: {users} users × {per_user} transactions seeded; load {} API calls/s (2 writes each) for {seconds}s",
            if rate > 0.0 { rate.to_string() } else { "max".to_owned() });
        println!("  tally start-up (first start: window backfill)  {:>8.2} s", startup.as_secs_f64());
        println!("  API calls written                   {calls} in {:.2} s = {:.0} writes/s ({late} more than 100 ms behind schedule; {workers} callers)",
            load_elapsed.as_secs_f64(), 2.0 * calls as f64 / load_elapsed.as_secs_f64());
        println!("  traced writes reflected             {}/{traced}", l.len());
        println!("  latency write → report   p50 {:>6.3} s   p99 {:>6.3} s   max {:>6.3} s",
            percentile(&l, 0.5).as_secs_f64(), percentile(&l, 0.99).as_secs_f64(), l.last().copied().unwrap_or_default().as_secs_f64());
        println!("  CPU during load: tally {tally_cpu:.2} s, server {server_cpu:.2} s ({:.0}% of the server's)", 100.0 * tally_cpu / server_cpu.max(1e-9));
        println!("  tally exit on SIGTERM: {status}");
        assert_eq!(l.len(), traced, "every traced write reached its report");
        assert!(status.success());
        server.stop();
    });
}
