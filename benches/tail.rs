//! `tally run` under load: latency from a source write to the stored report
//! that reflects it, and the events per second applied, against SecantusDB.
//!
//! Run: `cargo bench --bench tail` (defaults: 2,000 users × 50 transactions
//! seeded (tally starts with `--initial-days 2`, so its first-start backfill
//! stays short), then the API's write pattern — a transaction, then its pocket
//! balance — at 100 API calls per second for 30 s; `TALLY_BENCH_USERS`,
//! `TALLY_BENCH_TX_PER_USER`, `TALLY_BENCH_RATE`, `TALLY_BENCH_SECONDS`
//! change them). Every call is traced: its latency is the time from the
//! transaction insert until a report listing it is written (seen through a
//! change stream on the reports, so tracing adds no polling load).
//! Every phase runs on a server of its own, seeded alike (SecantusDB's cost
//! per write grows ~5× after about 10,000 write commands since its start,
//! so phases one after the other on one server would not compare): the
//! calls as fast as the server accepts them with nothing attached (its
//! ceiling), then with one change stream opened as tally opens it and a
//! reader that writes nothing (the ceiling the rates below are half of);
//! then the cost rows, server CPU per call at that rate: (1) the API alone,
//! (2) with that stream, (3) with `tally run` and no other stream; then the
//! latency at that rate with a tracing stream, a `mongod` target rate
//! (`TALLY_BENCH_MONGOD_RATE`, 250 calls/s, for `TALLY_BENCH_MONGOD_SECONDS`)
//! and, with `TALLY_BENCH_MAX_SECONDS=S`, a max-rate load: the same calls
//! one after the other, as fast as the server accepts them, for S seconds,
//! reporting the transactions per second tally applied (reflected in a
//! report). Each traced load waits up to `TALLY_BENCH_DRAIN_SECONDS` (60)
//! for the last report. `TALLY_BENCH_PRE_IMAGES=0` runs it without
//! pre-images. Under `cargo test` it runs a tiny load of each kind once as
//! a smoke test. `@row` lines are for `scripts/bench`'s table.

mod common;
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
use tally::batch::seed::{seed, SeedOptions};
use tally::core::calendar::Calendar;
use tally::core::money::Money;
use tally::core::rng::Rng;
use tokio::sync::Mutex;

fn env(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `tally run` against `db`; with `http`, serving `/metrics` on that port
/// (tally's own latency probe, `tally_source_to_write_seconds`, and its
/// census of commands, `--command-stats`).
fn start_tally(uri: &str, db: &str, pre_images: bool, http: Option<u16>) -> Child {
    common::tally_run(uri, db, pre_images)
        .env("TALLY_LOG", "warn")
        .env(
            "TALLY_COMMAND_STATS",
            if http.is_some() { "true" } else { "false" },
        )
        .env(
            "TALLY_HTTP_ADDR",
            http.map_or("off".to_owned(), |port| format!("127.0.0.1:{port}")),
        )
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

/// After a warm-up: waits until the server has been idle (under 10% of a
/// core) for three seconds in a row, at most `limit`; returns how long it
/// waited. A fixed drain is not enough for row (3): tally's rescan of every
/// user after their first change since its start begins a settle delay
/// (20 s) later and takes the server tens of seconds more, and what of it
/// still runs would be counted as the cost of the row's writes.
async fn wait_idle(server: Option<u32>, limit: Duration) -> Duration {
    let start = Instant::now();
    let Some(pid) = server else {
        return Duration::ZERO;
    };
    let mut quiet = 0;
    while quiet < 3 && start.elapsed() < limit {
        let before = cpu_seconds(pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        quiet = if cpu_seconds(pid) - before < 0.1 {
            quiet + 1
        } else {
            0
        };
    }
    start.elapsed()
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// How the load is paced: the API's calls at a fixed rate, or as fast as
/// the server accepts them (one call at a time, each awaited).
enum Pace {
    Rate { rate: f64, calls: usize },
    Max { seconds: f64 },
}

/// A change stream opened exactly as `tally run` opens it, read and
/// dropped: the server's cost of one stream, without tally's writes.
fn spawn_reader(db: &Database, pre_images: bool) -> tokio::task::JoinHandle<()> {
    use tally::service::backend::{Backend, Changes, Mongo, Watch};
    let backend = Mongo(db.clone());
    tokio::spawn(async move {
        let w = Watch {
            resume_after: None,
            start_at: None,
            pre_images,
        };
        let mut stream = backend.watch(w).await.expect("the reader's stream");
        loop {
            stream.next_if_any().await.expect("reader events");
        }
    })
}

/// The API's write pattern against the seeded pockets, every call traced.
struct Load<'a> {
    db: &'a Database,
    pockets: Vec<(ObjectId, ObjectId, Money)>,
    written_at: &'a Mutex<HashMap<ObjectId, Instant>>,
    reflected: &'a Mutex<Vec<(Instant, Duration)>>,
    /// Whether a tracer watches the reports: then a phase waits for every
    /// call's report; otherwise it waits `drain`.
    traced: bool,
    drain: Duration,
}

/// How long an untraced phase goes on after its last call, inside the CPU
/// window, so that the work the calls caused is counted — change events,
/// tally's flushes, and the rescans tally does a settle delay (20 s) after a
/// user's change (`recheck_pending`); the same for every untraced row.
fn untraced_drain(benching: bool) -> Duration {
    Duration::from_secs(if benching { 25 } else { 1 })
}

/// What one load phase measured.
struct Outcome {
    calls: usize,
    elapsed: Duration,
    late: usize,
    reflected: usize,
    /// From the first write until the last write was reflected.
    span: Duration,
    latencies: Vec<Duration>,
    /// From the first write until the drain ended: the CPU times' window.
    measured: Duration,
    tally_cpu: f64,
    server_cpu: Option<f64>,
}

impl Load<'_> {
    /// The same calls, one after the other, for `seconds`, with neither
    /// tally nor any change stream attached: what the server itself accepts
    /// of the API's pattern. Returns (calls, elapsed, server CPU seconds).
    async fn bare(
        &mut self,
        rng: &mut Rng,
        seconds: f64,
        server: Option<u32>,
    ) -> (usize, Duration, Option<f64>) {
        let server0 = server.map(cpu_seconds);
        let start = Instant::now();
        let mut calls = 0usize;
        while start.elapsed().as_secs_f64() < seconds {
            self.call(rng).await;
            calls += 1;
        }
        let elapsed = start.elapsed();
        self.written_at.lock().await.clear();
        let server_cpu = server.map(cpu_seconds).zip(server0).map(|(s1, s0)| s1 - s0);
        (calls, elapsed, server_cpu)
    }

    async fn run(
        &mut self,
        rng: &mut Rng,
        pace: Pace,
        tally: Option<u32>,
        server: Option<u32>,
    ) -> Outcome {
        self.reflected.lock().await.clear();
        self.written_at.lock().await.clear();
        let (tally0, server0) = (tally.map_or(0.0, cpu_seconds), server.map(cpu_seconds));
        let start = Instant::now();
        let mut late = 0usize;
        let mut calls = 0usize;
        loop {
            match pace {
                Pace::Rate { rate, calls: total } => {
                    if calls == total {
                        break;
                    }
                    let due = start + Duration::from_secs_f64(calls as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        tokio::time::sleep(wait).await;
                    } else {
                        late += 1;
                    }
                }
                Pace::Max { seconds } => {
                    if start.elapsed().as_secs_f64() >= seconds {
                        break;
                    }
                }
            }
            self.call(rng).await;
            calls += 1;
        }
        let elapsed = start.elapsed();
        if self.traced {
            let drain = Duration::from_secs_f64(env("TALLY_BENCH_DRAIN_SECONDS", 60.0));
            let deadline = Instant::now() + drain;
            while !self.written_at.lock().await.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } else {
            tokio::time::sleep(self.drain).await;
        }
        self.written_at.lock().await.clear();
        let measured = start.elapsed();
        let tally_cpu = tally.map_or(0.0, cpu_seconds) - tally0;
        let server_cpu = server.map(cpu_seconds).zip(server0).map(|(s1, s0)| s1 - s0);
        let reflected = std::mem::take(&mut *self.reflected.lock().await);
        let span = reflected
            .iter()
            .map(|(at, _)| at.duration_since(start))
            .max()
            .unwrap_or_default();
        let mut latencies: Vec<Duration> = reflected.into_iter().map(|(_, l)| l).collect();
        latencies.sort();
        Outcome {
            calls,
            elapsed,
            late,
            reflected: latencies.len(),
            span,
            latencies,
            measured,
            tally_cpu,
            server_cpu,
        }
    }

    /// Before a cost row: one call for each user, then the drain, outside
    /// the CPU window — so that row (3) measures a sidecar that has run a
    /// while (each user's first change after a start queues one rescan of
    /// its documents back to the first one; later ones do not, unless a
    /// balance drifts), and every row sees the same server history.
    async fn warm(&mut self, rng: &mut Rng) {
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<usize> = (0..self.pockets.len())
            .filter(|&k| seen.insert(self.pockets[k].0))
            .collect();
        for k in firsts {
            self.call_on(rng, k).await;
        }
        tokio::time::sleep(self.drain).await;
    }

    /// One API call: a transaction insert, then the pocket's balance.
    async fn call(&mut self, rng: &mut Rng) {
        let k = rng.below(self.pockets.len() as u64) as usize;
        self.call_on(rng, k).await;
    }

    /// An API call on the `k`th pocket.
    async fn call_on(&mut self, rng: &mut Rng, k: usize) {
        let (user, pocket, balance) = self.pockets[k];
        let amount = Money::new(rust_decimal::Decimal::new(
            100 + rng.below(10_000) as i64,
            2,
        ));
        let id = ObjectId::new();
        if self.traced {
            self.written_at.lock().await.insert(id, Instant::now());
        }
        self.db
            .collection::<Document>("transactions")
            .insert_one(doc! {
                "_id": id, "user_id": user, "type": "expense", "amount": amount.to_bson(),
                "pocket_from_id": pocket, "date": bson::DateTime::now(),
            })
            .await
            .unwrap();
        self.pockets[k].2 = balance - amount;
        self.db
            .collection::<Document>("pockets")
            .update_one(
                doc! { "_id": pocket },
                doc! { "$set": { "balance": self.pockets[k].2.to_bson() } },
            )
            .await
            .unwrap();
    }
}

impl Outcome {
    fn p(&self, q: f64) -> f64 {
        percentile(&self.latencies, q).as_secs_f64()
    }

    fn cpu(&self) -> String {
        match self.server_cpu {
            Some(s) => format!(
                "tally {:.2} s, server {s:.2} s ({:.0}% of the server's)",
                self.tally_cpu,
                100.0 * self.tally_cpu / s.max(1e-9)
            ),
            None => format!("tally {:.2} s (server not local)", self.tally_cpu),
        }
    }

    /// The server when it was busy most of the time, tally when it was;
    /// otherwise neither: the flush timing (a flush 200 ms after the last
    /// event, at most 1 s after the first) and round trips.
    fn bound(&self) -> String {
        let wall = self.measured.as_secs_f64().max(1e-9);
        let s = self.server_cpu.unwrap_or(0.0);
        let verdict = if s >= self.tally_cpu && s >= 0.5 * wall {
            "server"
        } else if self.tally_cpu > s && self.tally_cpu >= 0.5 * wall {
            "tally"
        } else {
            "neither side busy (flush timing, round trips)"
        };
        format!(
            "{verdict}: server cpu {} ({:.0}% of {wall:.1} s), tally cpu {:.2} s",
            self.server_cpu
                .map_or("?".to_owned(), |s| format!("{s:.2} s")),
            100.0 * s / wall,
            self.tally_cpu
        )
    }

    fn applied_per_second(&self) -> f64 {
        self.reflected as f64 / self.span.as_secs_f64().max(1e-9)
    }

    fn print(&self, label: &str) {
        println!(
            "  [{label}] API calls written          {} in {:.2} s ({:.1}/s, {} behind schedule)",
            self.calls,
            self.elapsed.as_secs_f64(),
            self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.late
        );
        println!("  [{label}] traced writes reflected    {}/{} in {:.2} s ({:.1} transactions/s applied)", self.reflected, self.calls, self.span.as_secs_f64(), self.applied_per_second());
        println!(
            "  [{label}] latency write → report   p50 {:>6.3} s   p99 {:>6.3} s   max {:>6.3} s",
            self.p(0.5),
            self.p(0.99),
            self.latencies
                .last()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
        );
        println!("  [{label}] CPU during load: {}", self.cpu());
    }

    /// Server CPU per API call, in ms.
    fn server_ms_per_call(&self) -> Option<f64> {
        self.server_cpu
            .map(|s| 1000.0 * s / self.calls.max(1) as f64)
    }

    /// The cost row of an untraced phase: server CPU per call.
    fn cost_row(&self, label: &str, bound: &str) {
        common::row(
            common::TAIL,
            &format!("tail, cost: {label}"),
            &format!(
                "{} calls in {:.1} s = {:.1}/s ({} behind schedule); **server cpu {} per call**, tally cpu {:.2} s",
                self.calls,
                self.elapsed.as_secs_f64(),
                self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9),
                self.late,
                self.server_ms_per_call()
                    .map_or("?".to_owned(), |ms| format!("{ms:.2} ms")),
                self.tally_cpu
            ),
            bound,
        );
    }

    fn rows(&self, label: &str) {
        common::row(
            common::TAIL,
            &format!("tail, {label}: API calls written (2 writes each)"),
            &format!(
                "{} in {:.1} s = {:.1}/s ({} behind schedule); server cpu {} per call",
                self.calls,
                self.elapsed.as_secs_f64(),
                self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9),
                self.late,
                self.server_cpu.map_or("?".to_owned(), |s| format!(
                    "{:.1} ms",
                    1000.0 * s / self.calls.max(1) as f64
                ))
            ),
            "the bench's writes wait for the server",
        );
        common::row(
            common::TAIL,
            &format!("tail, {label}: latency write → report"),
            &format!(
                "p50 {:.3} s, **p99 {:.3} s**, max {:.3} s ({}/{} reflected)",
                self.p(0.5),
                self.p(0.99),
                self.latencies
                    .last()
                    .copied()
                    .unwrap_or_default()
                    .as_secs_f64(),
                self.reflected,
                self.calls
            ),
            &self.bound(),
        );
        common::row(
            common::TAIL,
            &format!("tail, {label}: applied"),
            &format!(
                "{:.1} transactions/s ({:.1} change events/s)",
                self.applied_per_second(),
                2.0 * self.applied_per_second()
            ),
            &self.bound(),
        );
    }
}

/// How long a cost row waits, after its warm-up, for the server to go idle.
const IDLE_LIMIT: Duration = Duration::from_secs(180);

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
    // Calls per second of the cost and latency rows; by default half the
    // ceiling of the server with one change stream, measured first.
    let rate = match std::env::var("TALLY_BENCH_RATE") {
        Ok(v) if benching => Some(v.parse::<f64>().expect("TALLY_BENCH_RATE: a number")),
        _ if benching => None,
        _ => Some(10.0),
    };
    // The 500 writes/s row: a `mongod` target, run when asked (0: none).
    let mongod_rate = Some(env("TALLY_BENCH_MONGOD_RATE", 250.0)).filter(|r| benching && *r > 0.0);
    let pre_images = env("TALLY_BENCH_PRE_IMAGES", 1.0) != 0.0;
    let seconds = if benching {
        env("TALLY_BENCH_SECONDS", 30.0)
    } else {
        3.0
    };
    let max_seconds = if benching {
        env("TALLY_BENCH_MAX_SECONDS", 0.0)
    } else {
        1.0
    };
    let bare_seconds = if benching {
        env("TALLY_BENCH_BARE_SECONDS", 10.0)
    } else {
        1.0
    };
    tokio::runtime::Runtime::new().expect("runtime").block_on(async move {
        let written_at: Arc<Mutex<HashMap<ObjectId, Instant>>> = Arc::default();
        let reflected: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::default();
        let mut rng = Rng::new(11);
        // Every phase below runs on a server of its own, seeded alike:
        // SecantusDB's cost per write grows ~5× after about 10,000 write
        // commands since it started (BENCHMARKS.md), so rows measured one
        // after the other on one server would compare different servers.
        let new_server = || Fresh::start(users, per_user, untraced_drain(benching));

        // The server alone: its own ceiling for this pattern.
        let mut f = new_server().await;
        let (bare_calls, bare_elapsed, bare_cpu) = f.load(&written_at, &reflected).bare(&mut rng, bare_seconds, f.spid).await;
        assert!(bare_calls > 0, "the server took no call");
        f.server.stop();

        // With one change stream opened exactly as tally opens it and a
        // reader that writes nothing: its ceiling sets the rate of the rows
        // below (half of it), so that each row runs where the server keeps up.
        let mut f = new_server().await;
        let reader = spawn_reader(&f.db, pre_images);
        let (stream_calls, stream_elapsed, stream_cpu) = f.load(&written_at, &reflected).bare(&mut rng, bare_seconds, f.spid).await;
        reader.abort();
        f.server.stop();
        let stream_ceiling = stream_calls as f64 / stream_elapsed.as_secs_f64().max(1e-9);
        let rate = rate.unwrap_or((0.5 * stream_ceiling).max(1.0));
        let calls = ((rate * seconds) as usize).max(1);

        // The three cost rows, at that rate.
        let mut f = new_server().await;
        let mut load = f.load(&written_at, &reflected);
        load.warm(&mut rng).await;
        wait_idle(f.spid, IDLE_LIMIT).await;
        let alone = load.run(&mut rng, Pace::Rate { rate, calls }, None, f.spid).await;
        f.server.stop();
        let mut f = new_server().await;
        let reader = spawn_reader(&f.db, pre_images);
        let mut load = f.load(&written_at, &reflected);
        load.warm(&mut rng).await;
        wait_idle(f.spid, IDLE_LIMIT).await;
        let with_stream = load.run(&mut rng, Pace::Rate { rate, calls }, None, f.spid).await;
        reader.abort();
        f.server.stop();
        let mut f = new_server().await;
        let started = Instant::now();
        let port = common::http::free_port();
        let mut tally = start_tally(&f.uri, &f.name, pre_images, Some(port));
        common::wait_started(&f.db).await;
        let startup = started.elapsed();
        // Let the first start's work end before the cost is measured.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut load = f.load(&written_at, &reflected);
        load.warm(&mut rng).await;
        let idle_after = wait_idle(f.spid, IDLE_LIMIT).await;
        // Latency in this row comes from tally's own histogram (source
        // write → the commit that wrote it): no second stream.
        const PROBE: &str = "tally_source_to_write_seconds";
        let before = common::scrape(port).unwrap_or_default();
        let with_tally = load.run(&mut rng, Pace::Rate { rate, calls }, Some(tally.id()), f.spid).await;
        let after = common::scrape(port).unwrap_or_default();
        let (probe_before, probe_after) = (common::buckets(&before, PROBE), common::buckets(&after, PROBE));
        let commands = Census::between(&before, &after);
        let (p50, observed) = common::quantile_bound(&probe_before, &probe_after, 0.5);
        let (p99, _) = common::quantile_bound(&probe_before, &probe_after, 0.99);
        stop_tally(&mut tally);
        f.server.stop();

        // Latency, on a server of its own: a change stream on the reports
        // sees tally's writes (pushed, not polled: no polling load, but a
        // second stream, which the cost rows above run without).
        let mut f = new_server().await;
        let mut tally = start_tally(&f.uri, &f.name, pre_images, None);
        common::wait_started(&f.db).await;
        let mut watch = f
            .db
            .collection::<Document>("daily_financial_reports")
            .watch()
            .full_document(FullDocumentType::UpdateLookup)
            .await
            .expect("watch reports");
        let tracer = {
            let (written_at, reflected) = (written_at.clone(), reflected.clone());
            tokio::spawn(async move {
                while let Some(event) = watch.try_next().await.expect("report events") {
                    let Some(report) = event.full_document else { continue };
                    let mut pending = written_at.lock().await;
                    for id in common::listed_ids(&report) {
                        if let Some(at) = pending.remove(&id) {
                            reflected.lock().await.push((Instant::now(), at.elapsed()));
                        }
                    }
                }
            })
        };
        let mut load = f.load(&written_at, &reflected);
        load.traced = true;
        let fixed = load.run(&mut rng, Pace::Rate { rate, calls }, Some(tally.id()), f.spid).await;
        let mongod = mongod_rate.map(|r| {
            let calls = ((r * env("TALLY_BENCH_MONGOD_SECONDS", 5.0)) as usize).max(1);
            (r, calls)
        });
        let at_mongod_rate = match mongod {
            Some((r, calls)) => Some(load.run(&mut rng, Pace::Rate { rate: r, calls }, Some(tally.id()), f.spid).await),
            None => None,
        };
        let max = if max_seconds > 0.0 {
            Some(load.run(&mut rng, Pace::Max { seconds: max_seconds }, Some(tally.id()), f.spid).await)
        } else {
            None
        };
        tracer.abort();
        let status = stop_tally(&mut tally);
        f.server.stop();

        println!("tail bench: {users} users × {per_user} transactions seeded; load {rate:.1}/s API calls (2 writes each) for {seconds}s");
        let per_call = |cpu: Option<f64>, calls: usize| cpu.map_or("?".to_owned(), |s| format!("{:.2} ms", 1000.0 * s / calls.max(1) as f64));
        let bare_rate = bare_calls as f64 / bare_elapsed.as_secs_f64().max(1e-9);
        println!("  server alone (no tally, no change stream), max rate: {bare_calls} API calls in {:.2} s = {bare_rate:.1}/s, server cpu {} per call", bare_elapsed.as_secs_f64(), per_call(bare_cpu, bare_calls));
        println!("  server + one change stream as tally opens it, max rate: {stream_calls} API calls in {:.2} s = {stream_ceiling:.1}/s, server cpu {} per call", stream_elapsed.as_secs_f64(), per_call(stream_cpu, stream_calls));
        for (label, o) in [("API alone", &alone), ("+ one stream", &with_stream), ("+ tally run", &with_tally)] {
            println!("  [{label}, {rate:.1}/s] {} calls, server cpu {} per call, tally cpu {:.2} s", o.calls, per_call(o.server_cpu, o.calls), o.tally_cpu);
        }
        println!("  tally start-up (first start: window backfill)  {:>8.2} s", startup.as_secs_f64());
        println!("  [+ tally run] after the warm-up's drain, the server was idle after {:.1} s more (limit {} s)", idle_after.as_secs_f64(), IDLE_LIMIT.as_secs());
        fixed.print(&format!("{rate:.1}/s"));
        if let Some(o) = &at_mongod_rate {
            o.print("mongod target rate");
        }
        if let Some(max) = &max {
            max.print("max rate");
        }
        println!("  tally exit on SIGTERM: {status}");
        println!("@info tail bench: {users} users × {per_user} transactions seeded, the API's pattern (transaction insert, then the pocket's balance `$set`); pre-images {}; every phase on a fresh server seeded alike; the cost rows run at half the ceiling of the server with one change stream ({rate:.1} calls/s), each after one call per user and the drain (tally's first rescan of each user after its start), for {seconds} s plus {} s of drain inside its CPU window, with no tracing stream; latency from the insert until a report listing it is written (seen through a change stream on the reports)", if pre_images { "on" } else { "off" }, untraced_drain(benching).as_secs());
        common::row(
            common::TAIL,
            &format!("tail: the server alone, the API's pattern as fast as it accepts for {bare_seconds} s (no tally, no change stream)"),
            &format!("{bare_rate:.1} calls/s = {:.0} writes/s; server cpu {} per call", 2.0 * bare_rate, per_call(bare_cpu, bare_calls)),
            "the server (one Python process)",
        );
        common::row(
            common::TAIL,
            &format!("tail: the server + one change stream as tally opens it (a reader that writes nothing), as fast as it accepts for {bare_seconds} s"),
            &format!("**ceiling {stream_ceiling:.1} calls/s**; server cpu {} per call", per_call(stream_cpu, stream_calls)),
            "the server (one Python process)",
        );
        alone.cost_row(&format!("(1) the API's pattern alone at {rate:.1}/s"), "the server");
        with_stream.cost_row(&format!("(2) + one change stream as tally opens it, a reader that writes nothing, at {rate:.1}/s"), "the server: change events");
        with_tally.cost_row(&format!("(3) + `tally run` (no other stream) at {rate:.1}/s"), "the server: tally's stream and writes");
        if let (Some(c1), Some(c2), Some(c3)) = (alone.server_ms_per_call(), with_stream.server_ms_per_call(), with_tally.server_ms_per_call()) {
            let marginal = c3 - c2;
            common::row(
                common::TAIL,
                "tail, cost: tally's marginal server cpu per call, (3) − (2), against the API's own (1); target ≤ 1.5×",
                &format!("{marginal:.2} ms vs {c1:.2} ms = **{:.2}×** ({})", marginal / c1.max(1e-9), if marginal <= 1.5 * c1 { "met" } else { "missed" }),
                "tally's writes, checkpoints and lease",
            );
        }
        commands.print(with_tally.calls, rate);
        println!("  [+ tally run, {rate:.1}/s] tally's probe: {observed} events, p50 ≤ {p50} s, p99 ≤ {p99} s (bucket bounds)");
        assert!(observed > 0.0, "tally's latency histogram observed nothing in row (3)");
        common::row(
            common::TAIL,
            &format!("tail, latency at half the one-stream ceiling ({rate:.1}/s), from tally's own histogram in row (3) (source write's wall time → commit of the flush that wrote it; no second stream); target p99 ≤ 2 s"),
            &format!("{observed} events: p50 ≤ {p50} s, **p99 ≤ {p99} s** ({})", if p99 <= 2.0 { "met" } else { "missed" }),
            "tally's flush pace and the server's write time",
        );
        common::row(common::TAIL, "tail: tally run start-up (first start, `--initial-days 2`)", &common::secs(startup), "window backfill (server writes)");
        fixed.rows(&format!("latency at half the one-stream ceiling, {rate:.1}/s for {seconds} s (target p99 ≤ 2 s)"));
        if let (Some(o), Some((r, _))) = (&at_mongod_rate, mongod) {
            o.rows(&format!("{r:.0}/s asked = {:.0} writes/s, a `mongod` target (p99 ≤ 2 s there)", 2.0 * r));
        }
        if let Some(max) = &max {
            max.rows(&format!("max rate for {max_seconds} s"));
        }
        assert_eq!(fixed.reflected, fixed.calls, "every traced write reached its report");
        if let Some(o) = &at_mongod_rate {
            assert_eq!(o.reflected, o.calls, "every traced write reached its report");
        }
        if let Some(max) = &max {
            assert_eq!(max.reflected, max.calls, "every traced write reached its report");
        }
        assert!(status.success());
    });
}

/// What tally asked of the server during a row, by command and collection
/// (`tally_server_commands_total`, `tally_server_command_seconds_total`
/// between two scrapes): how many, and their round trips summed.
struct Census(Vec<(String, f64, f64)>);

impl Census {
    fn between(before: &str, after: &str) -> Census {
        let delta = |name: &str| {
            let was = common::labelled(before, name);
            common::labelled(after, name)
                .into_iter()
                .map(move |(k, v)| {
                    let d = v - was.get(&k).copied().unwrap_or(0.0);
                    (k, d)
                })
        };
        let seconds: HashMap<String, f64> = delta("tally_server_command_seconds_total").collect();
        let mut rows: Vec<(String, f64, f64)> = delta("tally_server_commands_total")
            .filter(|(_, n)| *n > 0.0)
            .map(|(k, n)| {
                let s = seconds.get(&k).copied().unwrap_or(0.0);
                (k, n, s)
            })
            .collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        Census(rows)
    }

    /// Per API call: commands, and their round trips in ms (the server's
    /// time for them, plus its queue and the network).
    fn print(&self, calls: usize, rate: f64) {
        let per = |x: f64| x / calls.max(1) as f64;
        let total: f64 = self.0.iter().map(|r| r.2).sum();
        println!("  [+ tally run, {rate:.1}/s] tally's commands per API call, by round trip ({:.2} ms of round trips per call in all):", 1000.0 * per(total));
        for (labels, n, s) in &self.0 {
            println!(
                "    {labels:<60} {:>6.3} commands  {:>7.3} ms  {:>5.1}%",
                per(*n),
                1000.0 * per(*s),
                100.0 * s / total.max(1e-12)
            );
        }
    }
}

/// SIGTERM to tally; its exit status.
fn stop_tally(tally: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &tally.id().to_string()])
        .status();
    tally.wait().expect("tally exits")
}

/// A server of its own, seeded, with `tally init --create-source-index` done.
struct Fresh {
    server: support::Server,
    uri: String,
    name: String,
    db: Database,
    spid: Option<u32>,
    pockets: Vec<(ObjectId, ObjectId, Money)>,
    drain: Duration,
}

impl Fresh {
    async fn start(users: usize, per_user: usize, drain: Duration) -> Fresh {
        let server = support::start_server(&[], None);
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
        tally::mongo::connect::init(&db, true, true)
            .await
            .expect("init");
        let mut pockets = Vec::new();
        let mut cursor = db
            .collection::<Document>("pockets")
            .find(doc! { "deleted_at": null })
            .await
            .unwrap();
        while let Some(d) = cursor.try_next().await.unwrap() {
            if let Ok(p) = tally::core::source::decode_pocket(&d) {
                if let (Some(u), Ok(b)) = (p.user_id, p.balance) {
                    pockets.push((u, p.id, b));
                }
            }
        }
        let spid = server_pid(server.port());
        Fresh {
            server,
            uri,
            name,
            db,
            spid,
            pockets,
            drain,
        }
    }

    fn load<'a>(
        &'a self,
        written_at: &'a Mutex<HashMap<ObjectId, Instant>>,
        reflected: &'a Mutex<Vec<(Instant, Duration)>>,
    ) -> Load<'a> {
        Load {
            db: &self.db,
            pockets: self.pockets.clone(),
            written_at,
            reflected,
            traced: false,
            drain: self.drain,
        }
    }
}
