//! The night's work, old design against tally, in one run on one server:
//!
//! 1. **backfill** of the whole range against a bare cursor scan of the same
//!    transactions (the server's time taking the writes reported apart);
//! 2. **memory**: peak RSS (`VmHWM`) of a `tally run` process once it has
//!    started on the dataset and says it is tailing, at two dataset sizes,
//!    with the highest RSS sampled in each phase of its start (backfill of
//!    the window, load into memory, first comparison; told apart by its log
//!    lines), so that a peak can be put down to the phase that sets it;
//! 3. **baseline**: the three old cron jobs re-created (see [`old_design`]:
//!    *not part of tally*, for comparison only) for one night;
//! 4. **tally run**: the same night's three steps done by the `tally run`
//!    binary with every user's state already in memory (`src/service/live.rs`: the
//!    documents are built from memory and only what differs is written),
//!    timed from its "Finalized." log lines, per step and in total, with the
//!    ratio to the baseline (target ≤ 1/10), and its peak RSS at the end of
//!    the night. It resumes from the checkpoint the memory phase left on the
//!    main database (or, without one, starts with `--initial-days 2`), its
//!    clock set shortly before the night, the steps a few seconds apart
//!    (same periods, same work; see [`Night::run_schedule`]);
//! 5. **manual `tally finalize`**: the same three steps by
//!    [`tally::batch::finalize::finalize`] (the CLI's manual trigger, which rescans
//!    the server), on the output documents of the night's periods restored
//!    to what the backfill left, for comparison.
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
//! peak, 3), `TALLY_BENCH_NIGHT_LEAD` (seconds `tally run`'s clock starts
//! before the 23:59 step; default the memory phase's start-up time on the
//! main database + 3 s, else 30 s), `TALLY_BENCH_SERVER_CACHE` (the
//! in-memory server's cache, which holds all its data: 8G) and
//! `TALLY_BENCH_TALLY_BIN` (the `tally` binary; default the one cargo
//! built with the bench). Under `cargo test
//! --all-targets` it runs a tiny dataset once as a smoke test. Each phase
//! prints its wall time and the CPU time of the server and of tally in it
//! (what bounds it); `@row` lines are the table `scripts/bench` prints.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bson::{doc, Document};
use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use common::{bare_scan, benching, cpu_seconds, env, row, secs, status_bytes, Meter, Phase};
use futures::TryStreamExt;
use mongodb::{Client, Database};
use tally::batch::backfill::backfill;
use tally::batch::finalize::finalize;
use tally::batch::scan::Range;
use tally::batch::seed::{seed, SeedOptions, SeedSummary};
use tally::core::calendar::{date_label, first_of_month, Calendar};
use tally::core::reports::{earliest_dependency, Kind};
use tally::core::schedule::{parse_time, Schedule};

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

    /// The night's three steps: (kind, period).
    fn steps(&self) -> [(Kind, NaiveDate); 3] {
        [
            (Kind::Report, self.day),
            (Kind::Snapshot, self.day),
            (Kind::Monthly, first_of_month(self.day)),
        ]
    }

    /// The schedule `tally run` is given for the night: the same periods
    /// (reports of D at the end of D, snapshots of D and March's summaries
    /// after midnight), the steps seconds apart instead of a minute so that
    /// the night takes seconds of real time (its clock runs at real speed).
    fn run_schedule(&self) -> Schedule {
        let t = |s: &str| parse_time(s).expect("time");
        if benching() {
            Schedule {
                report_at: t("23:59:50"),
                snapshot_at: t("00:00:00"),
                monthly_at: t("00:00:10"),
            }
        } else {
            Schedule {
                report_at: t("23:59:57"),
                snapshot_at: t("00:00:00"),
                monthly_at: t("00:00:02"),
            }
        }
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
            // Benching, a private server whose in-memory store holds every
            // document and its oplog entry (the default 1G cache fills:
            // WT_CACHE_FULL on inserts); `TALLY_BENCH_SERVER_CACHE` (8G)
            // for larger sizes.
            let cache = std::env::var("TALLY_BENCH_SERVER_CACHE").unwrap_or_else(|_| "8G".into());
            let server = benching().then(|| support::start_server(&["--cache-size", &cache], None));
            let uri = server.as_ref().map_or_else(support::uri, |s| s.uri());
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
            tally::mongo::connect::init(&db, true, true)
                .await
                .expect("init");
            header(&sizes, &night, &seeded, &meter);

            backfill_phase(&db, &night, &meter).await;
            let startup = memory_phase(&client, &db, &uri, &sizes, &night, &meter).await;
            let baseline = baseline_phase(&db, &night, &meter).await;
            finalize_phase(&db, &uri, &sizes, &night, &meter, baseline, startup).await;
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
/// backfilled first so that every size starts on current state. Returns
/// the start-up time on the main database, if it ran there (it then left
/// its checkpoint there).
async fn memory_phase(
    client: &Client,
    main: &Database,
    uri: &str,
    sizes: &Sizes,
    night: &Night,
    meter: &Meter,
) -> Option<Duration> {
    let bin = common::tally_bin();
    let mut peaks: Vec<(usize, u64)> = Vec::new();
    let mut main_startup = None;
    for &users in &sizes.memory_users {
        let own_db = users != sizes.users;
        let db = if own_db {
            let db = client.database(&support::unique_db("bench_mem"));
            seed(&db, &night.cal, &night.seed_options(users, sizes.per_user))
                .await
                .expect("seed");
            tally::mongo::connect::init(&db, true, true)
                .await
                .expect("init");
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
        let phases: Vec<String> = START_PHASES
            .iter()
            .zip(m.phase_peaks)
            .filter(|(_, p)| *p > 0)
            .map(|((_, name), p)| format!("{name} {:.1}", mib(p)))
            .collect();
        println!(
            "memory: tally run, {users} users: highest RSS sampled in each phase (MiB): {}",
            phases.join(", ")
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
        } else {
            main_startup = Some(m.startup);
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
    main_startup
}

/// The phases of a start, each begun by a log line of `tally run`
/// (`Tailer::start`), and after them the first seconds of tailing.
const START_PHASES: [(&str, &str); 5] = [
    ("", "connect"),
    ("First start: building the window", "backfill of the window"),
    ("Window built from the source", "load into memory"),
    ("Open window loaded into memory", "first comparison, plans"),
    ("Tailing transactions and pockets", "tailing"),
];

struct RunMemory {
    peak: u64,
    /// Highest RSS sampled (every 20 ms) in each of [`START_PHASES`].
    phase_peaks: [u64; START_PHASES.len()],
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
    let phase = Arc::new(AtomicUsize::new(0));
    let reader = {
        let phase = phase.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = START_PHASES
                    .iter()
                    .rposition(|(l, _)| !l.is_empty() && line.contains(l))
                {
                    phase.fetch_max(i, Relaxed);
                }
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        })
    };
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (phase, sampling, pid) = (phase.clone(), sampling.clone(), pid.clone());
        std::thread::spawn(move || {
            let mut peaks = [0u64; START_PHASES.len()];
            while sampling.load(Relaxed) {
                if let Some(rss) = status_bytes(&pid, "VmRSS") {
                    let p = &mut peaks[phase.load(Relaxed)];
                    *p = (*p).max(rss);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peaks
        })
    };
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
    sampling.store(false, Relaxed);
    let phase_peaks = sampler.join().expect("sampler");
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
        phase_peaks,
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

/// The night's work by tally: `tally run`'s three steps from memory (the
/// main rows), then the manual `tally finalize` path (secondary rows) on
/// the night's periods restored to what the backfill left.
async fn finalize_phase(
    db: &Database,
    uri: &str,
    sizes: &Sizes,
    night: &Night,
    meter: &Meter,
    baseline: Phase,
    startup: Option<Duration>,
) {
    let saved = save_periods(db, night).await;
    night_phase(db, uri, sizes, night, meter, baseline, startup).await;
    let restored = restore_periods(db, saved).await;
    println!(
        "manual finalize: {restored} documents of the night's periods restored as the backfill left them"
    );
    manual_finalize_phase(db, night, meter, baseline).await;
}

/// The stored documents of the night's periods (as the backfill left them).
type Saved = Vec<(Kind, NaiveDate, Vec<Document>)>;

fn period_filter(kind: Kind, period: NaiveDate) -> Document {
    doc! { kind.date_field(): date_label(period) }
}

async fn save_periods(db: &Database, night: &Night) -> Saved {
    let mut saved = Vec::new();
    for (kind, period) in night.steps() {
        let docs: Vec<Document> = db
            .collection::<Document>(kind.collection())
            .find(period_filter(kind, period))
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("read");
        saved.push((kind, period, docs));
    }
    saved
}

/// Puts the saved documents back in place of the night's periods; returns
/// how many.
async fn restore_periods(db: &Database, saved: Saved) -> usize {
    let mut n = 0;
    for (kind, period, docs) in saved {
        let coll = db.collection::<Document>(kind.collection());
        coll.delete_many(period_filter(kind, period))
            .await
            .expect("delete");
        n += docs.len();
        for chunk in docs.chunks(1000) {
            coll.insert_many(chunk.to_vec()).await.expect("restore");
        }
    }
    n
}

/// One step of the night as `tally run` logged it.
struct NightStep {
    kind: Kind,
    period: NaiveDate,
    documents: u64,
    closed_only: u64,
    /// `elapsed_ms` of its "Finalized." line.
    elapsed: Duration,
    /// CPU seconds of tally and of the server from just before the step
    /// (its due time, or the end of the step before) to its log line;
    /// `None` when it ran as catch-up during start-up.
    cpu: Option<(f64, Option<f64>)>,
    catch_up: bool,
}

impl NightStep {
    fn phase(&self) -> Option<Phase> {
        self.cpu.map(|(own, server)| Phase {
            wall: self.elapsed,
            server,
            own,
        })
    }

    fn bound(&self) -> String {
        match self.phase() {
            Some(p) => p.bound("tally"),
            None => "ran as catch-up during start-up: no CPU figures of its own".to_owned(),
        }
    }
}

struct NightRun {
    steps: Vec<NightStep>,
    peak: u64,
    rss: u64,
    /// From spawning `tally run` to its "Tailing" line.
    startup: Duration,
    resumed: bool,
    tally_cpu: f64,
}

/// Starts `tally run` with its clock `lead` before the night's first step
/// and the night's [`Night::run_schedule`], follows its log until the three
/// steps of the night have run (CPU of tally and the server sampled just
/// before each is due and at its log line), reads its peak RSS, stops it
/// with SIGTERM and checks it exits 0.
fn run_night(
    bin: &str,
    uri: &str,
    database: &str,
    night: &Night,
    lead: Duration,
    meter: &Meter,
) -> NightRun {
    let schedule = night.run_schedule();
    let steps = night.steps();
    let dues: Vec<DateTime<Utc>> = steps
        .iter()
        .map(|&(kind, period)| schedule.due_at(&night.cal, kind, period))
        .collect();
    let tally_now = dues[0] - chrono::Duration::from_std(lead).expect("lead");
    let at = |t: NaiveTime| t.format("%H:%M:%S").to_string();
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(["run", "--initial-days", "2"])
        .args(["--daily-report-at", &at(schedule.report_at)])
        .args(["--snapshot-at", &at(schedule.snapshot_at)])
        .args(["--monthly-at", &at(schedule.monthly_at)])
        .env("TALLY_MONGODB_URI", uri)
        .env("TALLY_DATABASE", database)
        .env("TALLY_TIMEZONE", ZONE)
        .env("TALLY_NOW", tally_now.to_rfc3339())
        .env("TALLY_LOG", "info")
        .env("TALLY_HTTP_ADDR", "off")
        .env("NO_COLOR", "1")
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
    // Real instant at which step i is due on tally's clock (which the
    // child sets a little after `started`: sampling is early, never late).
    let real_due = |i: usize| {
        started
            + (dues[i] - tally_now)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .saturating_sub(Duration::from_millis(150))
    };
    let sample = || (cpu_seconds(&pid).unwrap_or(0.0), meter.server_cpu());
    let timeout = lead
        + (dues[2] - dues[0]).to_std().unwrap_or_default()
        + Duration::from_secs(env("TALLY_BENCH_START_TIMEOUT", 1800) as u64);
    let mut log: Vec<String> = Vec::new();
    let mut startup: Option<Duration> = None;
    let mut resumed = false;
    let mut done: Vec<Option<NightStep>> = vec![None, None, None];
    let mut before: Option<(f64, Option<f64>)> = None;
    loop {
        let next = done.iter().position(Option::is_none);
        let Some(next) = next else { break };
        let ready = next > 0 || startup.is_some();
        if before.is_none() && ready && Instant::now() >= real_due(next) {
            before = Some(sample());
        }
        match lines_rx.recv_timeout(Duration::from_millis(20)) {
            Ok(line) => {
                if startup.is_none() && line.contains("Tailing") {
                    startup = Some(started.elapsed());
                    resumed = line.contains("resumed=true");
                }
                for (i, &(kind, period)) in steps.iter().enumerate() {
                    let Some((ms, documents, closed_only)) =
                        common::finalized(&line, kind.cli_name(), &period.to_string())
                    else {
                        continue;
                    };
                    let end = sample();
                    let cpu = if i == next {
                        before.take().map(|(own, server)| {
                            (end.0 - own, end.1.zip(server).map(|(e, s)| e - s))
                        })
                    } else {
                        None
                    };
                    done[i] = Some(NightStep {
                        kind,
                        period,
                        documents,
                        closed_only,
                        elapsed: Duration::from_millis(ms),
                        cpu,
                        catch_up: startup.is_none(),
                    });
                    // The next step, if already due, starts now.
                    if i + 1 < steps.len() && Instant::now() >= real_due(i + 1) {
                        before = Some(end);
                    }
                }
                log.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().expect("wait");
                panic!(
                    "tally run exited ({status}) before the night's steps; its log:\n{}",
                    log.join("\n")
                );
            }
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            panic!(
                "tally run did not finish the night's steps within {timeout:?}; its log:\n{}",
                log.join("\n")
            );
        }
    }
    let peak = status_bytes(&pid, "VmHWM").expect("VmHWM");
    let rss = status_bytes(&pid, "VmRSS").unwrap_or(0);
    let tally_cpu = cpu_seconds(&pid).unwrap_or(0.0);
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
    NightRun {
        steps: done.into_iter().map(|s| s.expect("step")).collect(),
        peak,
        rss,
        startup: startup.unwrap_or_default(),
        resumed,
        tally_cpu,
    }
}

/// The night's three steps done by `tally run` from memory, on the main
/// database as the backfill (and the memory phase's run) left it.
async fn night_phase(
    db: &Database,
    uri: &str,
    sizes: &Sizes,
    night: &Night,
    meter: &Meter,
    baseline: Phase,
    startup: Option<Duration>,
) {
    let lead = Duration::from_secs(match std::env::var("TALLY_BENCH_NIGHT_LEAD") {
        Ok(v) => v.trim().parse().expect("TALLY_BENCH_NIGHT_LEAD: seconds"),
        Err(_) => startup.map_or(if benching() { 30 } else { 5 }, |s| s.as_secs() + 3),
    });
    let run = run_night(&common::tally_bin(), uri, db.name(), night, lead, meter);
    let schedule = night.run_schedule();
    let at = |t: NaiveTime| t.format("%H:%M:%S").to_string();
    let catch_up = run.steps.iter().filter(|s| s.catch_up).count();
    let how = format!(
        "`tally run` {}, clock started {} s before the night, steps at {}, {} and {} local ({ZONE}); tailing after {:.2} s{}",
        if run.resumed { "resumed from the memory phase's checkpoint" } else { "first start (`--initial-days 2`)" },
        lead.as_secs(),
        at(schedule.report_at),
        at(schedule.snapshot_at),
        at(schedule.monthly_at),
        run.startup.as_secs_f64(),
        if catch_up > 0 {
            format!("; {catch_up} step(s) ran as catch-up during start-up")
        } else {
            String::new()
        }
    );
    println!("@info tally run night: {how}");
    let wall: Duration = run.steps.iter().map(|s| s.elapsed).sum();
    let total = run
        .steps
        .iter()
        .map(NightStep::phase)
        .collect::<Option<Vec<Phase>>>()
        .map(|p| sum(&p));
    let documents: u64 = run.steps.iter().map(|s| s.documents).sum();
    for s in &run.steps {
        assert!(
            s.documents > 0,
            "tally run's {} step of {} wrote nothing",
            s.kind.cli_name(),
            s.period
        );
    }
    let ratio = wall.as_secs_f64() / baseline.wall.as_secs_f64().max(1e-9);
    println!("tally run (state in memory, from its log):");
    let names = ["23:59 reports final", "00:00 snapshots", "00:01 monthly"];
    for (name, s) in names.iter().zip(&run.steps) {
        println!(
            "  {name:<22} {:>8.3} s  {} documents ({} only marked final)   {}",
            s.elapsed.as_secs_f64(),
            s.documents,
            s.closed_only,
            s.phase()
                .map_or("catch-up at start-up".to_owned(), |p| p.cpu())
        );
    }
    println!(
        "  {:<22} {:>8.3} s  {documents} documents   {}",
        "total",
        wall.as_secs_f64(),
        total.map_or("?".to_owned(), |p| p.cpu())
    );
    println!(
        "  = {ratio:.3} of the baseline (1/{:.1}); target ≤ 1/10",
        1.0 / ratio.max(1e-9)
    );
    println!(
        "  peak RSS {:.1} MiB (RSS now {:.1} MiB), tally cpu {:.2} s in all",
        mib(run.peak),
        mib(run.rss),
        run.tally_cpu
    );
    let labels = [
        format!("reports of {} final", night.day),
        format!("snapshots of {}", night.day),
        format!("summaries of {}", first_of_month(night.day).format("%Y-%m")),
    ];
    for ((name, label), s) in names.iter().zip(&labels).zip(&run.steps) {
        let closed = if s.closed_only > 0 {
            format!(", {} only marked final", s.closed_only)
        } else {
            String::new()
        };
        row(
            common::FINALIZE,
            &format!(
                "tally run (state in memory): {} step, {label} ({} documents{closed})",
                &name[..5],
                s.documents
            ),
            &secs(s.elapsed),
            &s.bound(),
        );
    }
    row(
        common::FINALIZE,
        "tally run: the night's total (target ≤ 1/10 of the baseline)",
        &format!(
            "**{}** = **1/{:.1}** of the baseline ({})",
            secs(wall),
            1.0 / ratio.max(1e-9),
            if ratio <= 0.1 { "met" } else { "missed" }
        ),
        &total.map_or("a step ran as catch-up: no CPU figures".to_owned(), |p| {
            p.bound("tally")
        }),
    );
    row(
        common::MEMORY,
        &format!(
            "memory: peak RSS of `tally run` at the end of the night (after the three steps), {} users × {} days",
            sizes.users, sizes.days
        ),
        &format!("**{:.1} MiB**", mib(run.peak)),
        &format!(
            "tally's own heap ({}; tally cpu {:.2} s in all)",
            if run.resumed {
                "resumed: window loaded from the server"
            } else {
                "first start"
            },
            run.tally_cpu
        ),
    );
}

/// The manual `tally finalize` path ([`finalize`], which rescans the
/// server) for the same three steps: for comparison, not the nightly path.
async fn manual_finalize_phase(db: &Database, night: &Night, meter: &Meter, baseline: Phase) {
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
    println!("manual `tally finalize` (rescans the server; state current):");
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
        "  = {ratio:.3} of the baseline (1/{:.1})",
        1.0 / ratio.max(1e-9)
    );
    row(
        common::FINALIZE,
        &format!(
            "manual `tally finalize` (rescans the server): reports of {} final ({n1} documents)",
            night.day
        ),
        &secs(reports.wall),
        &reports.bound("tally"),
    );
    row(
        common::FINALIZE,
        &format!(
            "manual `tally finalize`: snapshots of {} ({n2} documents)",
            night.day
        ),
        &secs(snapshots.wall),
        &snapshots.bound("tally"),
    );
    row(
        common::FINALIZE,
        &format!(
            "manual `tally finalize`: summaries of {} ({n3} documents)",
            first_of_month(night.day).format("%Y-%m")
        ),
        &secs(monthly.wall),
        &monthly.bound("tally"),
    );
    row(
        common::FINALIZE,
        "manual `tally finalize`: the three steps' total (not the nightly path)",
        &format!(
            "{} = 1/{:.1} of the baseline",
            secs(total.wall),
            1.0 / ratio.max(1e-9)
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
    let label = tally::core::calendar::date_label;
    // Year-to-date baselines: the final snapshot of the day before the
    // period (and on the 1st, the previous month's summary), read by date
    // without hint in every variant, as `scan_since` does.
    let prev = tally::core::calendar::prev_day;
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
