//! The night's work, old design against tally, in one run on one server:
//!
//! 1. **backfill** of the whole range against a bare cursor scan of the same
//!    transactions (the server's time taking the writes reported apart);
//! 2. **memory**: peak RSS (`VmHWM`) of a `tally run` process once it has
//!    started on the dataset and says it is tailing, at two dataset sizes;
//! 3. **baseline**: the three old cron jobs re-created (see [`old_design`]:
//!    *not part of tally*, for comparison only) for one night;
//! 4. **tally finalize**: the same night's three steps by
//!    [`tally::schedule::finalize`], the data backfilled beforehand (state
//!    current), and its ratio to the baseline (target ≤ 1/10).
//!
//! The night is that of day D = 2026-03-31 in America/New_York: the 23:59
//! reports of D, the 00:00 snapshots of D and, because the 1st follows, the
//! 00:01 summaries of March. The dataset covers the days up to D.
//!
//! Run: `scripts/bench` (which also runs the tail bench and prints one
//! table), or `cargo bench --bench nightly` with `TALLY_BENCH_USERS`
//! (2,000), `TALLY_BENCH_TX_PER_USER` (55, so ≥ 100,000 live
//! transactions), `TALLY_BENCH_DAYS` (60), `TALLY_BENCH_MEMORY_USERS`
//! (comma-separated sizes; default half and all the users),
//! `TALLY_BENCH_MEMORY_WAIT` (seconds after "tailing" before reading the
//! peak, 3) and `TALLY_BENCH_TALLY_BIN` (the `tally` binary; default the one
//! cargo built with the bench). Under `cargo test --all-targets` it runs a
//! tiny dataset once as a smoke test. Each phase prints its wall time and
//! the CPU time of the server and of tally in it (what bounds it); `@row`
//! lines are the table `scripts/bench` prints.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bson::doc;
use chrono::{DateTime, Days, NaiveDate, Utc};
use common::{bare_scan, benching, cpu_seconds, env, row, secs, status_bytes, Meter, Phase};
use mongodb::{Client, Database};
use tally::batch::backfill;
use tally::calendar::{first_of_month, Calendar};
use tally::reports::{earliest_dependency, Kind};
use tally::scan::Range;
use tally::schedule::{finalize, Schedule};
use tally::seed::{seed, SeedOptions, SeedSummary};

const ZONE: &str = "America/New_York";
/// Seed of the dataset: the same seed gives the same first users at any size.
const SEED: u64 = 1;

struct Sizes {
    users: usize,
    per_user: usize,
    days: u64,
    memory_users: Vec<usize>,
    memory_wait: Duration,
}

impl Sizes {
    fn from_env() -> Sizes {
        if !benching() {
            return Sizes {
                users: 12,
                per_user: 6,
                days: 10,
                memory_users: vec![6, 12],
                memory_wait: Duration::from_millis(300),
            };
        }
        let users = env("TALLY_BENCH_USERS", 2000);
        let memory_users = std::env::var("TALLY_BENCH_MEMORY_USERS")
            .ok()
            .map(|v| {
                v.split(',')
                    .filter_map(|s| s.trim().replace('_', "").parse().ok())
                    .collect::<Vec<usize>>()
            })
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| vec![users / 2, users]);
        Sizes {
            users,
            per_user: env("TALLY_BENCH_TX_PER_USER", 55),
            days: env("TALLY_BENCH_DAYS", 60).max(1) as u64,
            memory_users,
            memory_wait: Duration::from_secs(env("TALLY_BENCH_MEMORY_WAIT", 3) as u64),
        }
    }
}

/// The night's times: the data ends on `day`, backfill and `tally run` see
/// it at 22:00 local time on that day (the day's reports open), and the
/// three steps run at their scheduled instants.
struct Night {
    cal: Calendar,
    day: NaiveDate,
    from: NaiveDate,
    evening: DateTime<Utc>,
}

impl Night {
    fn new(days: u64) -> Night {
        let cal = Calendar::from_name(ZONE).expect("zone");
        let day: NaiveDate = "2026-03-31".parse().expect("date");
        Night {
            cal,
            day,
            from: day - Days::new(days - 1),
            evening: cal.day_start(day) + chrono::Duration::hours(22),
        }
    }

    fn due(&self, kind: Kind) -> DateTime<Utc> {
        Schedule::default().due_at(&self.cal, kind, self.day)
    }

    fn seed_options(&self, users: usize, per_user: usize) -> SeedOptions {
        SeedOptions {
            users,
            transactions_per_user: per_user,
            from: self.from,
            to: self.day,
            seed: SEED,
            bulk: true,
        }
    }

    fn range(&self) -> Range {
        Range {
            from: self.from,
            to: self.day,
            kinds: Kind::ALL.to_vec(),
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `a` and `b` run one after the other: walls and CPU times add up.
fn sum(phases: &[Phase]) -> Phase {
    let mut out = Phase::default();
    for p in phases {
        out.wall += p.wall;
        out.own += p.own;
        out.server = match (out.server, p.server) {
            (Some(a), Some(b)) => Some(a + b),
            (None, b) if out.wall == p.wall => b,
            _ => None,
        };
    }
    out
}

fn main() {
    let sizes = Sizes::from_env();
    let night = Night::new(sizes.days);
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async move {
            let uri = support::uri();
            let meter = Meter::new(&uri);
            let client = Client::with_uri_str(&uri).await.expect("client");
            let db = client.database(&support::unique_db("bench_night"));
            let seeded = seed(
                &db,
                &night.cal,
                &night.seed_options(sizes.users, sizes.per_user),
            )
            .await
            .expect("seed");
            // As an operator would: `tally init --create-source-index`. The
            // indexes also serve the old jobs' per-user queries.
            tally::store::init(&db, true, true).await.expect("init");
            header(&sizes, &night, &seeded, &meter);

            backfill_phase(&db, &night, &meter).await;
            memory_phase(&client, &db, &uri, &sizes, &night, &meter).await;
            let baseline = baseline_phase(&db, &night, &meter).await;
            finalize_phase(&db, &night, &meter, baseline).await;
            finalize_reads(&db, &night, &meter).await;
            client.database(db.name()).drop().await.ok();
        });
}

fn header(sizes: &Sizes, night: &Night, seeded: &SeedSummary, meter: &Meter) {
    let documents = seeded.transactions + seeded.soft_deleted + seeded.invalid;
    println!(
        "@info dataset: {} users, {} pockets, {documents} transaction documents ({} live, {} soft-deleted, {} invalid) over {} days {}..{} ({ZONE}); night of {}",
        seeded.users, seeded.pockets, seeded.transactions, seeded.soft_deleted, seeded.invalid,
        sizes.days, night.from, night.day, night.day
    );
    println!(
        "@info server: SecantusDB {}",
        meter
            .server_pid
            .as_deref()
            .map_or("not local (no server CPU figures)".to_owned(), |p| format!(
                "pid {p} (CPU from /proc/{p}/stat)"
            ))
    );
}

/// Backfill of the whole range against a bare cursor scan of the same
/// transactions (as `benches/backfill.rs`).
async fn backfill_phase(db: &Database, night: &Night, meter: &Meter) {
    let start = night.cal.day_start(earliest_dependency(night.from));
    let filter = doc! { "date": { "$gte": bson::DateTime::from_millis(start.timestamp_millis()) } };
    bare_scan(db, "transactions", filter.clone(), None).await; // warm the server's cache
    let (scanned, scan) = meter.run(bare_scan(db, "transactions", filter, None)).await;
    let (summary, phase) = meter
        .run(backfill(db, night.cal, night.range(), night.evening, false))
        .await;
    let summary = summary.expect("backfill");
    assert_eq!(
        summary.writes.errors + summary.writes.conflicts,
        0,
        "{:?}",
        summary.writes
    );
    assert!(summary.writes.inserted > 0, "backfill wrote the range");
    let writes = summary.writes.server_time;
    let own = summary.elapsed.saturating_sub(writes);
    println!(
        "backfill: {scanned} transactions scanned bare, {} read by backfill, {} documents",
        summary.transactions_read, summary.documents
    );
    println!(
        "  bare scan               {:>8.3} s   {}",
        scan.wall.as_secs_f64(),
        scan.cpu()
    );
    println!(
        "  backfill                {:>8.3} s   {}",
        phase.wall.as_secs_f64(),
        phase.cpu()
    );
    println!("    server taking writes  {:>8.3} s", writes.as_secs_f64());
    println!(
        "    backfill minus writes {:>8.3} s = {:.2}× the bare scan",
        own.as_secs_f64(),
        own.as_secs_f64() / scan.wall.as_secs_f64()
    );
    row(
        common::BACKFILL,
        &format!("bare cursor scan of the transactions ({scanned} documents)"),
        &secs(scan.wall),
        &scan.bound("bench"),
    );
    row(
        common::BACKFILL,
        &format!(
            "backfill of the range ({} documents written)",
            summary.writes.inserted + summary.writes.updated
        ),
        &secs(phase.wall),
        &phase.bound("tally"),
    );
    row(
        common::BACKFILL,
        "… of which the server taking the writes",
        &secs(writes),
        "server (write round trips, `WriteStats::server_time`)",
    );
    row(
        common::BACKFILL,
        "… backfill minus writes (target ≤ 1.5× the bare scan)",
        &format!(
            "{} = **{:.2}×** the bare scan",
            secs(own),
            own.as_secs_f64() / scan.wall.as_secs_f64()
        ),
        "the sorted read of the transactions and stored documents (server), see the backfill row",
    );
}

/// Peak RSS of `tally run` started on the dataset at each size; the full
/// size uses the main database, smaller sizes a copy of its first users,
/// backfilled first so that every size starts on current state.
async fn memory_phase(
    client: &Client,
    main: &Database,
    uri: &str,
    sizes: &Sizes,
    night: &Night,
    meter: &Meter,
) {
    let bin = std::env::var("TALLY_BENCH_TALLY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_tally").to_owned());
    let mut peaks: Vec<(usize, u64)> = Vec::new();
    for &users in &sizes.memory_users {
        let own_db = users != sizes.users;
        let db = if own_db {
            let db = client.database(&support::unique_db("bench_mem"));
            seed(&db, &night.cal, &night.seed_options(users, sizes.per_user))
                .await
                .expect("seed");
            tally::store::init(&db, true, true).await.expect("init");
            let s = backfill(&db, night.cal, night.range(), night.evening, false)
                .await
                .expect("backfill");
            println!(
                "memory: {users} users seeded and backfilled ({} documents) in {:.2} s",
                s.documents,
                s.elapsed.as_secs_f64()
            );
            db
        } else {
            main.clone()
        };
        let m = run_tally(&bin, uri, db.name(), night, sizes.memory_wait, meter);
        println!(
            "memory: tally run, {users} users: peak RSS {:.1} MiB (RSS now {:.1} MiB), tailing after {:.2} s; tally cpu {:.2} s, server cpu {}",
            mib(m.peak), mib(m.rss), m.startup.as_secs_f64(), m.tally_cpu,
            m.server_cpu.map_or("?".to_owned(), |s| format!("{s:.2} s"))
        );
        let bound = match m.server_cpu {
            Some(s) => format!(
                "tally's own heap (start-up: tally cpu {:.2} s, server cpu {s:.2} s over {})",
                m.tally_cpu,
                secs(m.startup)
            ),
            None => format!(
                "tally's own heap (start-up: tally cpu {:.2} s over {})",
                m.tally_cpu,
                secs(m.startup)
            ),
        };
        row(common::MEMORY,
            &format!("memory: peak RSS of `tally run`, {users} users × {} days (target ≤ 256 MiB at 2,000 × 60)", sizes.days),
            &format!("**{:.1} MiB** (tailing after {})", mib(m.peak), secs(m.startup)),
            &bound,
        );
        peaks.push((users, m.peak));
        if own_db {
            db.drop().await.ok();
        }
    }
    if let (Some(&(u0, p0)), Some(&(u1, p1))) = (peaks.first(), peaks.last()) {
        if u1 > u0 {
            let per_1000 = (p1 as f64 - p0 as f64) / (u1 - u0) as f64 * 1000.0;
            row(
                common::MEMORY,
                "memory growth per 1,000 users",
                &format!("{:.1} MiB", per_1000 / (1024.0 * 1024.0)),
                &format!("difference of the two peaks ({u0} → {u1} users)"),
            );
        }
    }
}

struct RunMemory {
    peak: u64,
    rss: u64,
    startup: Duration,
    tally_cpu: f64,
    server_cpu: Option<f64>,
}

/// Starts `tally run` (its clock at the night's evening), waits until its
/// log says it is tailing, waits `wait` more, reads its peak RSS, stops it
/// with SIGTERM and checks it exits 0.
fn run_tally(
    bin: &str,
    uri: &str,
    database: &str,
    night: &Night,
    wait: Duration,
    meter: &Meter,
) -> RunMemory {
    let server0 = meter.server_cpu();
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("run")
        .env("TALLY_MONGODB_URI", uri)
        .env("TALLY_DATABASE", database)
        .env("TALLY_TIMEZONE", ZONE)
        .env("TALLY_NOW", night.evening.to_rfc3339())
        .env("TALLY_LOG", "info")
        .env("TALLY_HTTP_ADDR", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
    let pid = child.id().to_string();
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let timeout = Duration::from_secs(env("TALLY_BENCH_START_TIMEOUT", 1800) as u64);
    let mut log: Vec<String> = Vec::new();
    let startup = loop {
        match lines_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let tailing = line.to_ascii_lowercase().contains("tailing");
                log.push(line);
                if tailing {
                    break started.elapsed();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().expect("wait");
                panic!(
                    "tally run exited ({status}) before tailing; its log:\n{}",
                    log.join("\n")
                );
            }
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            panic!(
                "tally run did not say it is tailing within {timeout:?}; its log:\n{}",
                log.join("\n")
            );
        }
    };
    std::thread::sleep(wait);
    let peak = status_bytes(&pid, "VmHWM").expect("VmHWM");
    let rss = status_bytes(&pid, "VmRSS").unwrap_or(0);
    let tally_cpu = cpu_seconds(&pid).unwrap_or(0.0);
    let server_cpu = server0.and_then(|s0| Some(meter.server_cpu()? - s0));
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = child.wait().expect("tally exits");
    while let Ok(line) = lines_rx.try_recv() {
        log.push(line);
    }
    let _ = reader.join();
    assert!(
        status.success(),
        "tally run exits 0 on SIGTERM ({status}); its log:\n{}",
        log.join("\n")
    );
    RunMemory {
        peak,
        rss,
        startup,
        tally_cpu,
        server_cpu,
    }
}

async fn baseline_phase(db: &Database, night: &Night, meter: &Meter) -> Phase {
    old_design::prepare(db).await.expect("baseline collections");
    let users = old_design::users(db).await.expect("users");
    let (n1, reports) = meter
        .run(old_design::daily_reports(db, &night.cal, night.day, &users))
        .await;
    let (n2, snapshots) = meter
        .run(old_design::snapshots(db, night.day, &users))
        .await;
    let (n3, monthly) = meter
        .run(old_design::monthly(db, &night.cal, night.day, &users))
        .await;
    let (n1, n2, n3) = (
        n1.expect("reports"),
        n2.expect("snapshots"),
        n3.expect("monthly"),
    );
    let total = sum(&[reports, snapshots, monthly]);
    let n = users.len();
    println!(
        "baseline (old design, not tally): {n} users in batches of {}",
        old_design::BATCH
    );
    for (name, docs, p) in [
        ("23:59 daily reports", n1, &reports),
        ("00:00 snapshots", n2, &snapshots),
        ("00:01 monthly", n3, &monthly),
        ("total", n1 + n2 + n3, &total),
    ] {
        println!(
            "  {name:<22} {:>8.3} s  {docs} documents   {}   {:.1} ms per user",
            p.wall.as_secs_f64(),
            p.cpu(),
            p.wall.as_secs_f64() * 1000.0 / n.max(1) as f64
        );
    }
    let per_user = |p: &Phase| {
        format!(
            "{:.2} ms per user",
            p.wall.as_secs_f64() * 1000.0 / n.max(1) as f64
        )
    };
    row(
        common::BASELINE,
        &format!(
            "baseline (old design, not tally): 23:59 daily reports, {n} users, 2 round trips each"
        ),
        &format!("{} ({})", secs(reports.wall), per_user(&reports)),
        &reports.bound("bench client"),
    );
    row(
        common::BASELINE,
        "baseline: 00:00 snapshots, 2 round trips per user",
        &format!("{} ({})", secs(snapshots.wall), per_user(&snapshots)),
        &snapshots.bound("bench client"),
    );
    row(
        common::BASELINE,
        "baseline: 00:01 monthly summaries, 2 round trips per user",
        &format!("{} ({})", secs(monthly.wall), per_user(&monthly)),
        &monthly.bound("bench client"),
    );
    row(
        common::BASELINE,
        "baseline: the night's total",
        &format!("**{}** ({})", secs(total.wall), per_user(&total)),
        &total.bound("bench client"),
    );
    total
}

async fn finalize_phase(db: &Database, night: &Night, meter: &Meter, baseline: Phase) {
    // Year-to-date continues from final documents of the backfilled range,
    // as `tally run` trusts those of its window.
    let trusted = night.from;
    let step = |kind: Kind, period: NaiveDate| {
        finalize(db, night.cal, kind, period, night.due(kind), trusted, None)
    };
    let (n1, reports) = meter.run(step(Kind::Report, night.day)).await;
    let (n2, snapshots) = meter.run(step(Kind::Snapshot, night.day)).await;
    let (n3, monthly) = meter
        .run(step(Kind::Monthly, first_of_month(night.day)))
        .await;
    let (n1, n2, n3) = (
        n1.expect("reports"),
        n2.expect("snapshots"),
        n3.expect("monthly"),
    );
    assert!(
        n1 > 0 && n2 > 0 && n3 > 0,
        "each step wrote: {n1} reports, {n2} snapshots, {n3} summaries"
    );
    let total = sum(&[reports, snapshots, monthly]);
    let ratio = total.wall.as_secs_f64() / baseline.wall.as_secs_f64().max(1e-9);
    println!("tally finalize (state current):");
    for (name, docs, p) in [
        ("23:59 reports final", n1, &reports),
        ("00:00 snapshots", n2, &snapshots),
        ("00:01 monthly", n3, &monthly),
        ("total", n1 + n2 + n3, &total),
    ] {
        println!(
            "  {name:<22} {:>8.3} s  {docs} documents   {}",
            p.wall.as_secs_f64(),
            p.cpu()
        );
    }
    println!(
        "  = {ratio:.3} of the baseline (1/{:.1}); target ≤ 1/10",
        1.0 / ratio.max(1e-9)
    );
    row(
        common::FINALIZE,
        &format!(
            "tally finalize: reports of {} final ({n1} documents)",
            night.day
        ),
        &secs(reports.wall),
        &reports.bound("tally"),
    );
    row(
        common::FINALIZE,
        &format!(
            "tally finalize: snapshots of {} ({n2} documents)",
            night.day
        ),
        &secs(snapshots.wall),
        &snapshots.bound("tally"),
    );
    row(
        common::FINALIZE,
        &format!(
            "tally finalize: summaries of {} ({n3} documents)",
            first_of_month(night.day).format("%Y-%m")
        ),
        &secs(monthly.wall),
        &monthly.bound("tally"),
    );
    row(
        common::FINALIZE,
        "tally finalize: the night's total (target ≤ 1/10 of the baseline)",
        &format!(
            "**{}** = **1/{:.1}** of the baseline ({})",
            secs(total.wall),
            1.0 / ratio.max(1e-9),
            if ratio <= 0.1 { "met" } else { "missed" }
        ),
        &total.bound("tally"),
    );
}

/// What the snapshot and monthly steps ask the server for, read bare: the
/// year-to-date baselines, the period's transactions and stored documents
/// with the scan's filters,
/// sorted by user and hinted to the (user_id, date) indexes as a whole scan
/// is, then the same filters without sort or hint. Shows whether the
/// server's time goes into the period's data or into walking the index of
/// the whole history.
async fn finalize_reads(db: &Database, night: &Night, meter: &Meter) {
    let since =
        |d: NaiveDate| bson::DateTime::from_millis(night.cal.day_start(d).timestamp_millis());
    let month = first_of_month(night.day);
    let label = tally::calendar::date_label;
    // Year-to-date baselines: the final snapshot of the day before the
    // period (and on the 1st, the previous month's summary), read by date
    // without hint in every variant, as `scan_since` does.
    let prev = tally::calendar::prev_day;
    let baselines = |from: NaiveDate| {
        let mut b = vec![("daily_financial_snapshots", "snapshot_date", prev(from))];
        if from == first_of_month(from) {
            b.push((
                "monthly_financial_summaries",
                "month",
                first_of_month(prev(from)),
            ));
        }
        b
    };
    let steps = [
        (
            "snapshots",
            night.day,
            "daily_financial_snapshots",
            "snapshot_date",
            night.day,
        ),
        (
            "monthly",
            month,
            "monthly_financial_summaries",
            "month",
            month,
        ),
    ];
    // The third variant adds an index on each date field alone (tally's
    // init does not create them): what reads of one period cost when the
    // server can find the period without walking every user's history.
    for variant in ["hinted", "plain", "date index"] {
        if variant == "date index" {
            for (coll, field) in [
                ("transactions", "date"),
                ("daily_financial_snapshots", "snapshot_date"),
                ("monthly_financial_summaries", "month"),
            ] {
                let model = mongodb::IndexModel::builder()
                    .keys(doc! { field: 1 })
                    .build();
                db.collection::<bson::Document>(coll)
                    .create_index(model)
                    .await
                    .expect("index");
            }
        }
        for (step, from, coll, field, period) in steps {
            let hinted = variant == "hinted";
            let (n, p) = meter
                .run(async {
                    let tx = doc! { "date": { "$gte": since(from) } };
                    let stored = doc! { field: { "$gte": label(period), "$lte": label(period) } };
                    let mut n = bare_scan(db, "transactions", tx, hinted.then_some("date")).await
                        + bare_scan(db, coll, stored, hinted.then_some(field)).await;
                    for (c, f, d) in baselines(from) {
                        n += bare_scan(db, c, doc! { f: label(d) }, None).await;
                    }
                    n
                })
                .await;
            let how = match variant {
                "hinted" => "sorted by user, (user_id, date) indexes hinted, as the scan reads",
                "plain" => "same filters, no sort or hint",
                _ => "same filters, no sort or hint, with an index on the date field alone (not created by tally)",
            };
            println!(
                "  bare reads of the {step} step ({how}): {n} documents, {:.3} s, {}",
                p.wall.as_secs_f64(),
                p.cpu()
            );
            row(
                common::FINALIZE,
                &format!("… bare reads of the {step} step's inputs from {from} on, {how} ({n} documents)"),
                &secs(p.wall),
                &p.bound("bench"),
            );
        }
    }
}

/// The old cron jobs, re-created for comparison only: not part of tally.
mod old_design;
