//! Takeover after `kill -9` of the leader under load: the seconds from the
//! kill until the next instance leads ("Acquired leadership." in its log),
//! and until the documents are current again (a marker transaction written
//! with the driver right after the kill is listed in its user's daily
//! report), in two modes:
//!
//! * **alone** — one instance; the killed one is restarted at once, as a
//!   supervisor would;
//! * **standby** — two instances; the standby takes over, and the killed
//!   one is restarted (as the next standby) once the standby leads.
//!
//! Throughout, `tally seed --users 30 --transactions-per-user 1 --trickle 40`
//! writes the API's pattern (a transaction, then its pocket's balance) at
//! 40 calls per second into a database seeded with `tally seed --users 30
//! --transactions-per-user 20`. Each kill comes at a random moment 2–6 s
//! after the previous instance led (seeded RNG, seed printed).
//!
//! Run: `cargo bench --bench takeover` (defaults: 20 trials per mode, lease
//! TTL 15 s = tally's default; `TALLY_BENCH_TRIALS`, `TALLY_BENCH_LEASE_TTL`,
//! `TALLY_BENCH_RATE`, `TALLY_BENCH_SEED` change them). Prints one line per
//! trial, then one markdown table. Under `cargo test` it runs one trial per
//! mode with `--lease-ttl 3` and asserts that leadership came within
//! TTL + 10 s and the documents got current (within 90 s).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use bson::{doc, Document};
use futures::TryStreamExt;
use mongodb::options::FullDocumentType;
use mongodb::{Client, Database};
use tally::core::money::Money;
use tally::core::rng::Rng;
use tokio::sync::Mutex;

const LEADS: &str = "Acquired leadership.";
const STANDS_BY: &str = "Standing by";

/// One `tally run` child, its stderr in a log file read incrementally.
struct Instance {
    child: Child,
    log: PathBuf,
    label: String,
    read: u64,
    leads: usize,
    stands_by: usize,
    started: Instant,
}

impl Instance {
    fn start(uri: &str, db: &str, ttl: u64, dir: &std::path::Path, label: &str) -> Instance {
        let log = dir.join(format!("{label}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["run", "--lease-ttl", &ttl.to_string(), "--http-addr", "off"])
            .env("TALLY_MONGODB_URI", uri)
            .env("TALLY_DATABASE", db)
            .env("TALLY_TIMEZONE", "UTC")
            .env("TALLY_LOG", "tally=info,warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("tally starts");
        Instance {
            child,
            log,
            label: label.to_owned(),
            read: 0,
            leads: 0,
            stands_by: 0,
            started: Instant::now(),
        }
    }

    /// Reads the complete lines logged since the last call and counts
    /// the lines that matter.
    fn poll(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.log) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.read)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let text = String::from_utf8_lossy(&buf[..=end]);
        self.leads += text.matches(LEADS).count();
        self.stands_by += text.matches(STANDS_BY).count();
        self.read += end as u64 + 1;
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Lines of the log that mention the lease or leadership.
    fn lease_lines(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("leader")
                    || l.contains("lease")
                    || l.contains("standing by")
                    || l.contains("session")
                    || l.contains("warn")
                    || l.contains("error")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until the instance has logged `needle`'s count to `n`.
    async fn wait(&mut self, what: &str, n: usize, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            self.poll();
            let count = if what == LEADS {
                self.leads
            } else {
                self.stands_by
            };
            if count >= n {
                return Instant::now();
            }
            assert!(
                self.alive(),
                "{} exited while waiting for {what:?}:\n{}",
                self.label,
                self.tail(40)
            );
            assert!(
                Instant::now() < deadline,
                "{} did not log {what:?} within {timeout:?}:\n{}",
                self.label,
                self.tail(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.alive() {
            self.kill9();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

type Seen = Arc<Mutex<HashMap<ObjectId, Option<Instant>>>>;

/// Markers: one transaction per trial written with the driver right after
/// the kill; a change stream on the reports says when one is listed
/// (pushed, not polled: the measurement adds no load to the server).
struct Markers {
    db: Database,
    pockets: Vec<(ObjectId, ObjectId)>,
    seen: Seen,
}

impl Markers {
    async fn write(&self, rng: &mut Rng) -> ObjectId {
        let (user, pocket) = self.pockets[rng.below(self.pockets.len() as u64) as usize];
        let id = ObjectId::new();
        self.seen.lock().await.insert(id, None);
        let amount = Money::new(rust_decimal::Decimal::new(
            100 + rng.below(10_000) as i64,
            2,
        ));
        self.db
            .collection::<Document>("transactions")
            .insert_one(doc! {
                "_id": id, "user_id": user, "type": "expense", "amount": amount.to_bson(),
                "pocket_from_id": pocket, "date": bson::DateTime::now(),
            })
            .await
            .expect("marker written");
        id
    }

    async fn wait(&self, id: ObjectId, timeout: Duration, who: &mut Instance) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Some(at)) = self.seen.lock().await.get(&id) {
                return *at;
            }
            assert!(
                who.alive(),
                "{} exited before marker {id} was reflected:\n{}",
                who.label,
                who.tail(40)
            );
            assert!(
                Instant::now() < deadline,
                "marker {id} not in a report within {timeout:?}; {}:\n{}",
                who.label,
                who.tail(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Trial {
    mode: &'static str,
    n: usize,
    waited: (f64, f64),
    lead: f64,
    current: f64,
    leader: String,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Sleeps until 2–6 s (random) after `led`; returns (planned, actual)
/// delay. The actual one is longer when the previous trial's marker was
/// current only after the planned moment: the kill then comes at once.
async fn random_wait(rng: &mut Rng, led: Instant) -> (f64, f64) {
    let delay = 2.0 + 4.0 * rng.below(1_000_000) as f64 / 1e6;
    let at = led + Duration::from_secs_f64(delay);
    if let Some(d) = at.checked_duration_since(Instant::now()) {
        tokio::time::sleep(d).await;
    }
    (delay, led.elapsed().as_secs_f64())
}

fn tally_cmd(uri: &str, db: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
    c.args(args)
        .env("TALLY_MONGODB_URI", uri)
        .env("TALLY_DATABASE", db)
        .env("TALLY_TIMEZONE", "UTC")
        .env("TALLY_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    c
}

fn main() {
    let benching = common::benching();
    let trials = if benching {
        common::env("TALLY_BENCH_TRIALS", 20)
    } else {
        1
    };
    let ttl = if benching {
        common::env("TALLY_BENCH_LEASE_TTL", 15) as u64
    } else {
        3
    };
    let rate = common::env("TALLY_BENCH_RATE", 40);
    let rng_seed = common::env("TALLY_BENCH_SEED", 1) as u64;
    // Generous: a takeover is expected within TTL + TTL/3 + start-up.
    // Under `cargo test` only the takeover bound is asserted; the wait for
    // currency is generous there (a smoke run on a busy machine).
    let timeout = Duration::from_secs(if benching { 6 * ttl + 120 } else { 90 });
    let first_start = Duration::from_secs(300);
    let bench_start = Instant::now();
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async move {
            let mut server = support::start_server(&[], None);
            let uri = server.uri();
            let client = Client::with_uri_str(&uri).await.expect("client");
            let name = support::unique_db("bench_takeover");
            let db = client.database(&name);
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("takeover").join(&name);
            std::fs::create_dir_all(&dir).expect("log dir");

            let seeded = tally_cmd(&uri, &name, &["seed", "--users", "30", "--transactions-per-user", "20"])
                .stdout(Stdio::null())
                .status()
                .expect("tally seed");
            assert!(seeded.success(), "tally seed: {seeded}");
            tally::mongo::connect::init(&db, true, true).await.expect("init");

            let trickle_log = dir.join("trickle.log");
            let mut trickle = tally_cmd(&uri, &name, &[
                "seed", "--users", "30", "--transactions-per-user", "1",
                "--trickle", &rate.to_string(), "--seed", "7",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&trickle_log).expect("trickle log"))
            .spawn()
            .expect("trickle starts");

            let mut pockets = Vec::new();
            let mut cursor = db.collection::<Document>("pockets").find(doc! { "deleted_at": null }).await.unwrap();
            while let Some(d) = cursor.try_next().await.unwrap() {
                if let Ok(p) = tally::core::source::decode_pocket(&d) {
                    if let (Some(u), Ok(_)) = (p.user_id, p.balance) {
                        pockets.push((u, p.id));
                    }
                }
            }
            assert!(!pockets.is_empty(), "seeded pockets");

            let seen: Seen = Arc::default();
            let mut watch = db
                .collection::<Document>("daily_financial_reports")
                .watch()
                .full_document(FullDocumentType::UpdateLookup)
                .await
                .expect("watch reports");
            let tracer = {
                let seen = seen.clone();
                tokio::spawn(async move {
                    while let Some(event) = watch.try_next().await.expect("report events") {
                        let Some(report) = event.full_document else { continue };
                        let now = Instant::now();
                        let mut seen = seen.lock().await;
                        for id in common::listed_ids(&report) {
                            if let Some(at @ None) = seen.get_mut(&id) {
                                *at = Some(now);
                            }
                        }
                    }
                })
            };
            let markers = Markers { db: db.clone(), pockets, seen };
            let mut rng = Rng::new(rng_seed);
            let mut results: Vec<Trial> = Vec::new();
            let mut odd: Vec<String> = Vec::new();
            let slow = ttl as f64 + ttl as f64 / 3.0 + 2.0;
            println!(
                "takeover bench: lease TTL {ttl} s{}, {trials} trials per mode, trickle {rate} API calls/s, kill-moment RNG seed {rng_seed}; logs in {}",
                if ttl == 15 { " (the default)" } else { "" },
                dir.display()
            );

            // (a) alone: the killed instance is restarted at once.
            let mut gen = 0usize;
            let mut leader = Instance::start(&uri, &name, ttl, &dir, "alone-0");
            let mut led = leader.wait(LEADS, 1, first_start).await;
            println!("  alone: first start led after {:.2} s", leader.started.elapsed().as_secs_f64());
            for n in 1..=trials {
                let waited = random_wait(&mut rng, led).await;
                let killed = Instant::now();
                leader.kill9();
                gen += 1;
                let mut next = Instance::start(&uri, &name, ttl, &dir, &format!("alone-{gen}"));
                let marker = markers.write(&mut rng).await;
                led = next.wait(LEADS, 1, timeout).await;
                let current = markers.wait(marker, timeout, &mut next).await;
                let t = Trial {
                    mode: "alone (restarted at once)",
                    n,
                    waited,
                    lead: led.duration_since(killed).as_secs_f64(),
                    current: current.saturating_duration_since(killed).as_secs_f64(),
                    leader: next.label.clone(),
                };
                report(&t, slow, &next, &leader, &mut odd);
                results.push(t);
                leader = next;
            }
            leader.terminate();

            // (b) a standby already running.
            let mut a = Instance::start(&uri, &name, ttl, &dir, "standby-0");
            let mut b = Instance::start(&uri, &name, ttl, &dir, "standby-1");
            gen = 1;
            let deadline = Instant::now() + first_start;
            let (mut leader, mut standby) = loop {
                a.poll();
                b.poll();
                if a.leads > 0 {
                    break (a, b);
                }
                if b.leads > 0 {
                    break (b, a);
                }
                assert!(a.alive() && b.alive(), "an instance exited:\n{}\n{}", a.tail(30), b.tail(30));
                assert!(Instant::now() < deadline, "nobody led");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let mut led = Instant::now();
            for n in 1..=trials {
                standby.wait(STANDS_BY, 1, first_start).await;
                let waited = random_wait(&mut rng, led).await;
                let killed = Instant::now();
                leader.kill9();
                let marker = markers.write(&mut rng).await;
                led = standby.wait(LEADS, 1, timeout).await;
                let current = markers.wait(marker, timeout, &mut standby).await;
                let t = Trial {
                    mode: "standby running",
                    n,
                    waited,
                    lead: led.duration_since(killed).as_secs_f64(),
                    current: current.saturating_duration_since(killed).as_secs_f64(),
                    leader: standby.label.clone(),
                };
                report(&t, slow, &standby, &leader, &mut odd);
                results.push(t);
                // The killed one comes back as the next standby.
                gen += 1;
                let restarted = Instance::start(&uri, &name, ttl, &dir, &format!("standby-{gen}"));
                leader = std::mem::replace(&mut standby, restarted);
            }
            leader.terminate();
            standby.terminate();

            tracer.abort();
            let _ = Command::new("kill").args(["-TERM", &trickle.id().to_string()]).status();
            let trickled = trickle.wait().expect("trickle exits");
            let written = db
                .collection::<Document>("transactions")
                .count_documents(doc! { "date": { "$gte": bson::DateTime::from_millis(
                    bson::DateTime::now().timestamp_millis() - bench_start.elapsed().as_millis() as i64) } })
                .await
                .unwrap_or(0);

            println!();
            println!("Takeover after kill -9 under {rate} API calls/s, lease TTL {ttl} s{} (seconds from the kill):", if ttl == 15 { " (default)" } else { "" });
            println!();
            println!("| mode | trials | lease TTL | leads: median | leads: max | current: median | current: max |");
            println!("|---|---|---|---|---|---|---|");
            for mode in ["alone (restarted at once)", "standby running"] {
                let rows: Vec<&Trial> = results.iter().filter(|t| t.mode == mode).collect();
                let mut lead: Vec<f64> = rows.iter().map(|t| t.lead).collect();
                let mut cur: Vec<f64> = rows.iter().map(|t| t.current).collect();
                let (lm, cm) = (median(&mut lead), median(&mut cur));
                println!(
                    "| {mode} | {} | {ttl} s | {lm:.2} s | {:.2} s | {cm:.2} s | {:.2} s |",
                    rows.len(),
                    lead.last().copied().unwrap_or(f64::NAN),
                    cur.last().copied().unwrap_or(f64::NAN),
                );
            }
            println!();
            println!(
                "transactions dated since the bench started: {written} (trickle exit: {trickled}); whole run {:.0} s",
                bench_start.elapsed().as_secs_f64()
            );
            if odd.is_empty() {
                println!("no trial led later than TTL + TTL/3 + 2 s = {slow:.1} s or got current more than 10 s after leading");
            } else {
                println!("trials that led later than TTL + TTL/3 + 2 s = {slow:.1} s or got current more than 10 s after leading:");
                for o in &odd {
                    println!("{o}");
                }
            }
            let limit = (ttl + 10) as f64;
            for t in &results {
                if !benching {
                    assert!(t.lead <= limit, "{}: led {:.2} s after the kill (> TTL + 10 s)", t.mode, t.lead);
                }
            }
            assert_eq!(results.len(), 2 * trials);
            server.stop();
        });
}

/// Prints one trial; keeps the log lines of a slow one.
fn report(t: &Trial, slow: f64, new: &Instance, killed: &Instance, odd: &mut Vec<String>) {
    println!(
        "  {} #{:>2}: killed {} {:.2} s after it led (planned {:.2} s); {} led after {:>6.2} s, current after {:>6.2} s",
        t.mode, t.n, killed.label, t.waited.1, t.waited.0, t.leader, t.lead, t.current
    );
    if t.lead > slow || t.current - t.lead > 10.0 {
        odd.push(format!(
            "--- {} #{}: led {:.2} s, current {:.2} s; {} (new leader) ---\n{}\n--- {} (killed), last lines ---\n{}",
            t.mode,
            t.n,
            t.lead,
            t.current,
            new.label,
            new.lease_lines(),
            killed.label,
            killed.tail(8)
        ));
    }
}
