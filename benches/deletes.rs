//! What a hard delete costs `tally run`, with and without pre-images: the
//! time until its effect is stored, and the CPU the server and tally spend
//! on it (issue 13, item 6).
//!
//! Run: `cargo bench --bench deletes` (defaults: 10,000 users × 55
//! transactions over the 60 days ending today (UTC); `TALLY_BENCH_USERS`,
//! `TALLY_BENCH_TX_PER_USER`, `TALLY_BENCH_DELETES` (5 per case),
//! `TALLY_BENCH_DELETE_DEADLINE` (60 s) change them). Under `cargo test` it
//! runs 50 users and 2 deletes per case as a smoke test.
//!
//! The reports and monthly summaries of the whole 60 days are stored first
//! by a batch backfill (as an earlier `tally backfill`, or a longer first
//! window, leaves them), then `tally run --initial-days 2 --settle-seconds 2`
//! starts. It recomputes from memory the days from its open window on (the
//! later of its managed start, 2 days ago, and the in-memory window of
//! `load_live`: the previous month's 1st at the earliest, never before the
//! month it started managing); the earlier reports are stored documents it
//! keeps current by rescanning their user from the source. Three cases,
//! each deleted with `delete_one` straight in `transactions` (pocket
//! balances left as they were):
//!
//! * (a) a transaction of yesterday: in the open window, in memory;
//! * (b) a transaction of 50 days ago, before the in-memory window: with a
//!   pre-image its (user, day) is in the event; without, tally locates it
//!   through the reports that list it (a `find` over
//!   `daily_financial_reports` by listed id, which no index serves);
//! * (c) an invalid transaction (a non-numeric `amount`) that tally
//!   recorded in `tally_rejects`: it counted nowhere, so only the record
//!   goes.
//!
//! Each delete starts with the server and tally quiet. The effect is the
//! report of the (user, day) no longer listing the transaction (a, b) or
//! the reject record gone (c), polled by one indexed `find_one` every
//! 20 ms: load on the server too, inside the figures (its cost alone is
//! measured and printed). CPU is counted from the delete until the server
//! and tally are quiet again, so the user's recheck after the settle delay
//! (tailer.rs `recheck_pending`: a rescan of the user from the source, as
//! a transaction change moves every earlier closing balance — here for
//! good, the pocket balance having stayed) is part of a delete's cost.
//! Two reads are also timed alone: the lookup (`Backend::locate`) that finds a
//! transaction without its pre-image, and the reports read of a one-user
//! rescan as the scan sends it. After each run tally is stopped with
//! SIGTERM and its "Stopped cleanly." line must show `full_refreshes=0`.
//! `@row` lines are for `scripts/bench`'s table.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use bson::{doc, Bson, Document};
use chrono::{Days, NaiveDate, Utc};
use common::Meter;
use futures::TryStreamExt;
use mongodb::{Client, Database};
use tally::batch::backfill::backfill;
use tally::batch::scan::{self, Range};
use tally::batch::seed::{seed, SeedOptions};
use tally::core::calendar::{date_label, first_of_month, prev_day, Calendar};
use tally::core::reports::Kind;
use tally::service::backend::{Backend, Mongo};

const REPORTS: &str = "daily_financial_reports";
const POLL: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, PartialEq)]
enum Case {
    InMemory,
    BeforeMemory,
    Reject,
}

impl Case {
    const ALL: [Case; 3] = [Case::InMemory, Case::BeforeMemory, Case::Reject];

    fn label(self, a: NaiveDate, b: NaiveDate) -> String {
        match self {
            Case::InMemory => {
                format!("(a) a transaction of yesterday ({a}), in the open window (in memory)")
            }
            Case::BeforeMemory => {
                format!("(b) a transaction of 50 days ago ({b}), before the in-memory window")
            }
            Case::Reject => "(c) an invalid transaction recorded in tally_rejects".to_owned(),
        }
    }

    fn path(self, pre_images: bool) -> &'static str {
        match (self, pre_images) {
            (Case::InMemory, _) => "memory knows the (user, day): recomputed from memory",
            (Case::BeforeMemory, true) => {
                "the pre-image names the (user, day); the user rescanned from the source"
            }
            (Case::BeforeMemory, false) => {
                "located through the reports that list it (indexed), then the user rescanned"
            }
            (Case::Reject, _) => "a recorded reject: nothing recomputed, the record removed",
        }
    }
}

/// A transaction listed by the report of (user, day).
#[derive(Clone)]
struct Listed {
    id: ObjectId,
    user: ObjectId,
    day: NaiveDate,
}

/// What one delete measured.
struct Sample {
    to_effect: Duration,
    /// CPU seconds from the delete until the effect was seen.
    server_to_effect: Option<f64>,
    tally_to_effect: f64,
    /// CPU seconds from the delete until the server and tally were quiet
    /// again (the user's recheck after the settle delay included).
    server: Option<f64>,
    tally: f64,
    /// From the delete until quiet again.
    window: Duration,
}

fn tally_cpu(pid: u32) -> f64 {
    common::cpu_seconds(&pid.to_string()).unwrap_or(0.0)
}

fn start_tally(uri: &str, db: &str, pre_images: bool, settle: u64, log: &Path) -> Child {
    common::tally_run(uri, db, pre_images)
        .args(["--settle-seconds", &settle.to_string()])
        .env("TALLY_TIMEZONE", "UTC")
        .env("TALLY_LOG", "info")
        .env("TALLY_HTTP_ADDR", "off")
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("tally starts")
}

/// A field `name=value` of the "Stopped cleanly." line of `log`.
fn stopped_field(log: &str, name: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains("Stopped cleanly."))?;
    common::log_field(line, name)
}

/// Transactions listed in the reports of `day`, one per user not in `used`.
async fn listed(
    db: &Database,
    day: NaiveDate,
    n: usize,
    used: &mut HashSet<ObjectId>,
) -> Vec<Listed> {
    let mut cursor = db
        .collection::<Document>(REPORTS)
        .find(doc! { "report_date": date_label(day) })
        .projection(doc! { "user_id": 1, "transactions_by_pocket.transactions.transaction_id": 1 })
        .await
        .expect("reports of the day");
    let mut out = Vec::new();
    while let Some(r) = cursor.try_next().await.expect("reports of the day") {
        let Ok(user) = r.get_object_id("user_id") else {
            continue;
        };
        if used.contains(&user) {
            continue;
        }
        if let Some(id) = common::listed_ids(&r).first() {
            used.insert(user);
            out.push(Listed { id: *id, user, day });
            if out.len() == n {
                break;
            }
        }
    }
    assert_eq!(
        out.len(),
        n,
        "not enough reports listing a transaction on {day}"
    );
    out
}

/// Whether the report of (user, day) lists the transaction.
async fn lists(db: &Database, t: &Listed) -> bool {
    let report = db
        .collection::<Document>(REPORTS)
        .find_one(doc! { "user_id": t.user, "report_date": date_label(t.day) })
        .projection(doc! { "transactions_by_pocket.transactions.transaction_id": 1 })
        .await
        .expect("the report");
    report.is_some_and(|r| common::listed_ids(&r).contains(&t.id))
}

async fn recorded(db: &Database, id: ObjectId) -> bool {
    db.collection::<Document>("tally_rejects")
        .find_one(doc! { "collection": "transactions", "source_id": id })
        .await
        .expect("tally_rejects")
        .is_some()
}

/// Inserts an invalid transaction of `user` (dated yesterday) and waits until
/// tally recorded it in `tally_rejects`; its id.
async fn recorded_reject(
    db: &Database,
    user: ObjectId,
    day: NaiveDate,
    deadline: Duration,
) -> ObjectId {
    let pocket = db
        .collection::<Document>("pockets")
        .find_one(doc! { "user_id": user })
        .await
        .expect("a pocket")
        .and_then(|p| p.get_object_id("_id").ok());
    let id = ObjectId::new();
    let noon = day.and_hms_opt(12, 0, 0).expect("noon").and_utc();
    db.collection::<Document>("transactions")
        .insert_one(doc! {
            "_id": id, "user_id": user, "type": "expense", "amount": "twelve",
            "pocket_from_id": pocket.map_or(Bson::Null, Bson::ObjectId),
            "date": bson::DateTime::from_millis(noon.timestamp_millis()),
        })
        .await
        .expect("insert the invalid transaction");
    let started = Instant::now();
    while !recorded(db, id).await {
        assert!(
            started.elapsed() < deadline,
            "tally never recorded the reject {id}"
        );
        tokio::time::sleep(POLL).await;
    }
    id
}

/// When the server and tally went quiet, and their CPU seconds then.
struct Quiet {
    at: Instant,
    server: Option<f64>,
    tally: f64,
}

/// Waits until neither the server nor tally is busy (under 20% and 10% of a
/// core per half second) for `calm` in a row, at most `limit`.
async fn wait_quiet(meter: &Meter, tally: u32, calm: Duration, limit: Duration) -> Quiet {
    let started = Instant::now();
    let step = Duration::from_millis(500);
    let reading = || Quiet {
        at: Instant::now(),
        server: meter.server_cpu(),
        tally: tally_cpu(tally),
    };
    let mut quiet = reading();
    let mut last = reading();
    while started.elapsed() < limit {
        tokio::time::sleep(step).await;
        let now = reading();
        let server = now.server.unwrap_or(0.0) - last.server.unwrap_or(0.0);
        let busy =
            server > 0.2 * step.as_secs_f64() || now.tally - last.tally > 0.1 * step.as_secs_f64();
        last = now;
        if busy {
            quiet = reading();
        } else if quiet.at.elapsed() >= calm {
            break;
        }
    }
    quiet
}

/// How a delete is measured.
struct Timing {
    /// Every effect must be seen within it (checked after the rows are
    /// printed, so that a slower effect is still measured).
    deadline: Duration,
    /// Waited after the effect before watching for quiet (the settle
    /// delay and a second: the user's recheck has begun by then).
    after: Duration,
    /// Quiet this long in a row counts as quiet.
    calm: Duration,
}

/// Deletes one document, polls until its effect is stored, then waits until
/// the server and tally are quiet again.
async fn delete(
    db: &Database,
    meter: &Meter,
    tally: u32,
    case: Case,
    id: ObjectId,
    report: Option<&Listed>,
    timing: &Timing,
) -> Sample {
    // Zero `calm`: no waiting for quiet (the smoke test).
    let waits = !timing.calm.is_zero();
    if waits {
        wait_quiet(meter, tally, timing.calm, Duration::from_secs(300)).await;
    }
    let (s0, t0) = (meter.server_cpu(), tally_cpu(tally));
    let started = Instant::now();
    let r = db
        .collection::<Document>("transactions")
        .delete_one(doc! { "_id": id })
        .await
        .expect("delete");
    assert_eq!(r.deleted_count, 1, "{id} deleted");
    loop {
        let done = match (case, report) {
            (Case::Reject, _) => !recorded(db, id).await,
            (_, Some(t)) => !lists(db, t).await,
            (_, None) => unreachable!("a report for cases a and b"),
        };
        if done {
            break;
        }
        // Measured on past the deadline (the check is at the end), not forever.
        let limit = (10 * timing.deadline).max(Duration::from_secs(600));
        assert!(
            started.elapsed() < limit,
            "the delete of {id} had no effect within {} s",
            limit.as_secs()
        );
        tokio::time::sleep(POLL).await;
    }
    let to_effect = started.elapsed();
    let (s1, t1) = (meter.server_cpu(), tally_cpu(tally));
    let quiet = if waits {
        tokio::time::sleep(timing.after).await;
        wait_quiet(meter, tally, timing.calm, Duration::from_secs(300)).await
    } else {
        Quiet {
            at: Instant::now(),
            server: s1,
            tally: t1,
        }
    };
    let diff = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
    Sample {
        to_effect,
        server_to_effect: diff(s1, s0),
        tally_to_effect: t1 - t0,
        server: diff(quiet.server, s0),
        tally: quiet.tally - t0,
        window: quiet.at.max(started + to_effect).duration_since(started),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ms(s: Option<f64>) -> String {
    s.map_or("?".to_owned(), |s| format!("{:.0} ms", 1000.0 * s))
}

/// A CPU rate in ms per second.
fn per_s(s: Option<f64>) -> String {
    s.map_or("?".to_owned(), |s| format!("{:.0} ms/s", 1000.0 * s))
}

/// One run of tally (pre-images on or off) and the deletes of every case.
struct Run {
    pre_images: bool,
    startup: Duration,
    settled_after: Duration,
    idle_server: Option<f64>,
    idle_tally: f64,
    /// Server CPU seconds of one poll of a report, alone (idle deducted).
    poll_server: Option<f64>,
    samples: Vec<(Case, Vec<Sample>)>,
    full_refreshes: u64,
    unlocated: u64,
}

/// Runs `read` (a whole `find` of the reports) alone: (wall, server CPU).
async fn read_alone(db: &Database, meter: &Meter, filter: Document, sorted: bool) -> common::Phase {
    let ((), phase) = meter
        .run(async {
            let reports = db.collection::<Document>(REPORTS);
            let mut find = reports.find(filter);
            if sorted {
                find = find
                    .sort(doc! { "user_id": 1 })
                    .allow_disk_use(true)
                    .batch_size(2000);
            }
            let mut cursor = find.await.expect("find");
            while cursor.try_next().await.expect("find").is_some() {}
        })
        .await;
    phase
}

fn main() {
    let benching = common::benching();
    let users = if benching {
        common::env("TALLY_BENCH_USERS", 10_000)
    } else {
        50
    };
    let per_user = common::env("TALLY_BENCH_TX_PER_USER", 55);
    let k = if benching {
        common::env("TALLY_BENCH_DELETES", 5)
    } else {
        2
    };
    let settle: u64 = 2;
    let timing = Timing {
        deadline: Duration::from_secs(common::env("TALLY_BENCH_DELETE_DEADLINE", 60) as u64),
        after: Duration::from_secs(settle + 1),
        // The smoke test does not wait for quiet: its figures are not read.
        calm: if benching {
            Duration::from_secs(2)
        } else {
            Duration::ZERO
        },
    };
    let begun = Instant::now();
    tokio::runtime::Runtime::new().expect("runtime").block_on(async move {
        // The throwaway store lives in WiredTiger's cache: at 10,000 users
        // (550,000 transactions, ~350,000 reports, the oplog) the default 1G
        // fills and inserts fail with WT_CACHE_FULL.
        let mut server = support::start_server(&["--cache-size", "8G"], None);
        let uri = server.uri();
        let meter = Meter::new(&uri);
        let client = Client::with_uri_str(&uri).await.expect("client");
        let name = support::unique_db("bench_deletes");
        let db = client.database(&name);
        let cal = Calendar::from_name("UTC").expect("zone");
        let now = Utc::now();
        let today = cal.day_of(now);
        let from = today - Days::new(59);
        let opts = SeedOptions {
            users,
            transactions_per_user: per_user,
            from,
            to: today,
            seed: 13,
            bulk: true,
        };
        let t = Instant::now();
        let seeded = seed(&db, &cal, &opts).await.expect("seed");
        let seed_time = t.elapsed();
        tally::mongo::connect::init(&db, true, true).await.expect("init");
        // The reports and summaries of the whole range, as an earlier batch
        // backfill leaves them (the snapshots, which no delete's effect
        // reads, only in tally's own window: they are 60 per user).
        let t = Instant::now();
        let range = Range { from, to: today, kinds: vec![Kind::Report, Kind::Monthly] };
        let stored = backfill(&db, cal, range, now, false).await.expect("backfill");
        let backfill_time = t.elapsed();
        let reports = db.collection::<Document>(REPORTS).count_documents(doc! {}).await.expect("count");

        // tally's windows with `--initial-days 2` (tailer.rs `load_live`,
        // live.rs `open_from`): in memory from the previous month's 1st, not
        // before the month of its managed start; recomputed from memory from
        // the later of that and the managed start.
        let managed_from = today - Days::new(2);
        let memory_from = first_of_month(prev_day(first_of_month(today))).max(first_of_month(managed_from));
        let open_from = memory_from.max(managed_from);
        let day_a = today - Days::new(1);
        let day_b = today - Days::new(50);
        assert!(day_a >= open_from && day_b < memory_from && day_b >= from);

        let mut used = HashSet::new();
        let mut targets_a = listed(&db, day_a, 2 * k, &mut used).await;
        let mut targets_b = listed(&db, day_b, 2 * k, &mut used).await;
        let mut reject_users: Vec<ObjectId> =
            listed(&db, day_a, 2 * k, &mut used).await.into_iter().map(|t| t.user).collect();
        // Polled to measure what one poll costs the server: never deleted.
        let probe = listed(&db, today - Days::new(2), 1, &mut used).await.remove(0);

        let mut runs = Vec::new();
        for pre_images in [true, false] {
            let mode = if pre_images { "on" } else { "off" };
            let log_path: PathBuf = std::env::temp_dir().join(format!("{name}-pre-images-{mode}.log"));
            let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
            let t = Instant::now();
            let mut tally = start_tally(&uri, &name, pre_images, settle, &log_path);
            let pid = tally.id();
            while !read().contains("Tailing transactions and pockets.") {
                assert!(t.elapsed() < Duration::from_secs(1800), "tally never streamed:\n{}", read());
                assert!(tally.try_wait().expect("wait").is_none(), "tally exited:\n{}", read());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            common::wait_started(&db).await;
            let startup = t.elapsed();
            // The first flush compares every user's window with what is
            // stored: let it end before measuring.
            let quiet = wait_quiet(&meter, pid, timing.calm, Duration::from_secs(900)).await;
            let settled_after = quiet.at.duration_since(t).saturating_sub(startup);
            let idle = if benching { Duration::from_secs(5) } else { Duration::from_millis(500) };
            let (s0, t0) = (meter.server_cpu(), tally_cpu(pid));
            tokio::time::sleep(idle).await;
            let idle_server = meter.server_cpu().zip(s0).map(|(s1, s0)| (s1 - s0) / idle.as_secs_f64());
            let idle_tally = (tally_cpu(pid) - t0) / idle.as_secs_f64();
            // One poll's cost: the same `find_one` every 20 ms, nothing deleted.
            let polls = if benching { 250 } else { 10 };
            let s0 = meter.server_cpu();
            let t = Instant::now();
            for _ in 0..polls {
                assert!(lists(&db, &probe).await);
                tokio::time::sleep(POLL).await;
            }
            let poll_server = meter.server_cpu().zip(s0).map(|(s1, s0)| {
                ((s1 - s0) - idle_server.unwrap_or(0.0) * t.elapsed().as_secs_f64()) / polls as f64
            });

            let mut samples = Vec::new();
            for case in Case::ALL {
                let mut v = Vec::new();
                for _ in 0..k {
                    let sample = match case {
                        Case::InMemory | Case::BeforeMemory => {
                            let targets = if case == Case::InMemory { &mut targets_a } else { &mut targets_b };
                            let t = targets.pop().expect("a target");
                            assert!(lists(&db, &t).await, "the report of {} on {} lists it", t.user, t.day);
                            delete(&db, &meter, pid, case, t.id, Some(&t), &timing).await
                        }
                        Case::Reject => {
                            let user = reject_users.pop().expect("a user");
                            let id = recorded_reject(&db, user, day_a, timing.deadline).await;
                            delete(&db, &meter, pid, case, id, None, &timing).await
                        }
                    };
                    v.push(sample);
                }
                samples.push((case, v));
            }
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            let status = tally.wait().expect("tally exits");
            let log = read();
            assert!(status.success(), "tally's exit: {status}\n{log}");
            let full_refreshes = stopped_field(&log, "full_refreshes")
                .unwrap_or_else(|| panic!("no 'Stopped cleanly.' line:\n{log}"));
            let unlocated = stopped_field(&log, "unlocated").expect("unlocated=");
            runs.push(Run {
                pre_images,
                startup,
                settled_after,
                idle_server,
                idle_tally,
                poll_server,
                samples,
                full_refreshes,
                unlocated,
            });
        }

        // Two reads alone, on the same server, with nothing else running:
        // the lookup a delete without a pre-image sends to locate its
        // transaction (`Backend::locate` itself, for an id no report lists;
        // the run without pre-images made its indexes), and the reports read
        // of a one-user rescan with the filter the scan builds (`by_users`:
        // the user first, the date from the deleted day to tally's horizon;
        // sorted by user_id).
        let ids = vec![Bson::ObjectId(ObjectId::new())];
        let ((), locate) = meter
            .run(async {
                Mongo(db.clone()).locate(ids).await.expect("locate");
            })
            .await;
        let rescan_filter = scan::by_users(
            &[probe.user],
            doc! { "report_date": { "$gte": date_label(day_b), "$lte": date_label(today + Days::new(400)) } },
        );
        let rescan = read_alone(&db, &meter, rescan_filter, true).await;

        let total = begun.elapsed();
        println!(
            "deletes bench: {} users, {} transactions ({from} … {today}, UTC); {reports} reports stored; seed {:.1} s, backfill (reports, monthly) {:.1} s ({} documents)",
            seeded.users,
            seeded.transactions,
            seed_time.as_secs_f64(),
            backfill_time.as_secs_f64(),
            stored.documents
        );
        println!("  the lookup that locates a deleted transaction without pre-image, alone: {:.2} s, {}", locate.wall.as_secs_f64(), locate.cpu());
        println!("  the reports read of a one-user rescan from {day_b}, alone: {:.2} s, {}", rescan.wall.as_secs_f64(), rescan.cpu());
        for run in &runs {
            let mode = if run.pre_images { "on" } else { "off" };
            println!(
                "  pre-images {mode}: start {:.1} s, quiet {:.1} s later; idle server {}, tally {:.0} ms/s; one poll {}; Stopped cleanly: full_refreshes={} unlocated={}",
                run.startup.as_secs_f64(),
                run.settled_after.as_secs_f64(),
                per_s(run.idle_server),
                1000.0 * run.idle_tally,
                run.poll_server.map_or("?".to_owned(), |s| format!("{:.2} ms server cpu", 1000.0 * s)),
                run.full_refreshes,
                run.unlocated
            );
            for (case, samples) in &run.samples {
                let list = |f: &dyn Fn(&Sample) -> String| samples.iter().map(f).collect::<Vec<_>>().join(", ");
                println!("    {}", case.label(day_a, day_b));
                println!("      to effect [{}] s", list(&|s| format!("{:.3}", s.to_effect.as_secs_f64())));
                println!("      server cpu to effect [{}], until quiet [{}]", list(&|s| ms(s.server_to_effect)), list(&|s| ms(s.server)));
                println!("      tally cpu to effect [{}], until quiet [{}]", list(&|s| ms(Some(s.tally_to_effect))), list(&|s| ms(Some(s.tally))));
                println!("      quiet again after [{}] s", list(&|s| format!("{:.1}", s.window.as_secs_f64())));
            }
        }
        println!("  whole bench {:.1} s", total.as_secs_f64());

        println!(
            "@info deletes bench: {} users × {per_user} transactions over 60 days to {today} (UTC), {reports} reports and the monthly summaries stored by a batch backfill first; `tally run --initial-days 2 --settle-seconds {settle}` (open window from {open_from}, in memory from {memory_from}), started once with pre-images, once with `--no-pre-images`; {k} hard deletes (`delete_one` in transactions, balances untouched) per case, each from quiet; time to effect polled by one indexed `find_one` every 20 ms (one poll: {} server cpu, inside the figures); cpu from the delete until the server and tally are quiet again (the user's recheck after the settle delay included; idle: {} server, {:.0} ms/s tally); whole bench {:.0} s",
            seeded.users,
            runs[0].poll_server.map_or("?".to_owned(), |s| format!("{:.2} ms", 1000.0 * s)),
            per_s(runs[0].idle_server),
            1000.0 * runs[0].idle_tally,
            total.as_secs_f64()
        );
        for run in &runs {
            let mode = if run.pre_images { "on" } else { "off" };
            for (case, samples) in &run.samples {
                let times: Vec<f64> = samples.iter().map(|s| s.to_effect.as_secs_f64()).collect();
                let max = times.iter().copied().fold(0.0, f64::max);
                let n = samples.len().max(1) as f64;
                let server = samples.iter().map(|s| s.server).sum::<Option<f64>>().map(|s| s / n);
                let tally = samples.iter().map(|s| s.tally).sum::<f64>() / n;
                let server_fx = samples.iter().map(|s| s.server_to_effect).sum::<Option<f64>>();
                let tally_fx = samples.iter().map(|s| s.tally_to_effect).sum::<f64>();
                let wall_fx: f64 = times.iter().sum::<f64>().max(1e-9);
                let quiet = samples.iter().map(|s| s.window.as_secs_f64()).sum::<f64>() / n;
                let share = server_fx.map_or(0.0, |s| s / wall_fx);
                let verdict = if share >= 0.5 && server_fx.unwrap_or(0.0) >= tally_fx {
                    "the server"
                } else if tally_fx / wall_fx >= 0.5 {
                    "tally"
                } else {
                    "neither side busy: tally's flush timing and round trips"
                };
                common::row(
                    common::DELETES,
                    &format!("hard delete at {} users, pre-images {mode}: {}", seeded.users, case.label(day_a, day_b)),
                    &format!(
                        "median **{:.3} s** / max {max:.3} s to effect ({} deletes{}); per delete, server cpu **{}** (to the effect {}), tally cpu {:.0} ms (to the effect {:.0} ms), until quiet again after {quiet:.1} s",
                        median(times.clone()),
                        samples.len(),
                        match times.iter().filter(|t| **t > timing.deadline.as_secs_f64()).count() {
                            0 => String::new(),
                            late => format!(", {late} past the {} s deadline", timing.deadline.as_secs()),
                        },
                        ms(server),
                        ms(server_fx.map(|s| s / n)),
                        1000.0 * tally,
                        1000.0 * tally_fx / n,
                    ),
                    &format!(
                        "{verdict} (server {:.0}% of the time to effect); {}{}",
                        100.0 * share,
                        case.path(run.pre_images),
                        match server.zip(server_fx) {
                            Some((all, fx)) if all - fx / n > 0.5 => format!(
                                "; after the effect, {} of server cpu: the user's recheck after the settle delay (a rescan from the source)",
                                ms(Some(all - fx / n))
                            ),
                            _ => String::new(),
                        }
                    ),
                );
            }
        }
        common::row(
            common::DELETES,
            &format!("hard delete at {} users: the lookup that locates a transaction without its pre-image (`Backend::locate`), alone ({reports} reports)", seeded.users),
            &format!("{:.2} s, server cpu {}", locate.wall.as_secs_f64(), ms(locate.server)),
            "the server: two finds, each by its multikey index on the listed ids",
        );
        common::row(
            common::DELETES,
            &format!("hard delete at {} users: the reports read of a one-user rescan from {day_b} as the scan sends it (user_id `$in` first, then the date range), alone", seeded.users),
            &format!("{:.2} s, server cpu {}", rescan.wall.as_secs_f64(), ms(rescan.server)),
            "the server: the (user_id, report_date) index",
        );
        for run in &runs {
            let mode = if run.pre_images { "on" } else { "off" };
            common::row(
                common::DELETES,
                &format!("hard delete at {} users, pre-images {mode}: tally's counters at the stop", seeded.users),
                &format!("full_refreshes={} unlocated={}", run.full_refreshes, run.unlocated),
                "tally (the 'Stopped cleanly.' line)",
            );
            assert_eq!(run.full_refreshes, 0, "no delete refreshed the whole window (pre-images {mode})");
            for (case, samples) in &run.samples {
                for s in samples {
                    assert!(
                        s.to_effect <= timing.deadline,
                        "pre-images {mode}, {}: an effect took {:.1} s, past the {} s deadline",
                        case.label(day_a, day_b),
                        s.to_effect.as_secs_f64(),
                        timing.deadline.as_secs()
                    );
                }
            }
        }
        server.stop();
    });
}
