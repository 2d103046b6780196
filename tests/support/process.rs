//! `tally` as a child process for the integration tests: a clock that
//! starts at a chosen instant (passed to the binary as `TALLY_NOW`), one
//! test's database, zone and clock with the commands run against them, and
//! a running process whose log the tests read and wait on.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bson::Document;
use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use futures::TryStreamExt;
use mongodb::{Client, Database};
use serde_json::Value;
use tally::core::calendar::{local_instant, Calendar};

use super::poll::poll;

/// The settle delay the tests give `tally run` (`--settle-seconds`).
pub const SETTLE_SECONDS: u64 = 2;
/// How long a test waits for tally to catch up.
pub const CATCH_UP: Duration = Duration::from_secs(60);

/// A clock that starts at `base` and runs at the speed of real time.
#[derive(Clone, Copy, Debug)]
pub struct TestClock {
    base: DateTime<Utc>,
    started: Instant,
}

impl TestClock {
    pub fn at(base: DateTime<Utc>) -> TestClock {
        TestClock {
            base,
            started: Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.base + chrono::Duration::from_std(self.started.elapsed()).expect("elapsed")
    }

    pub fn rfc3339(&self) -> String {
        self.now()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }
}

/// An RFC 3339 instant.
pub fn instant(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

/// One test's database, zone and clock.
pub struct Env {
    pub uri: String,
    pub name: String,
    pub cal: Calendar,
    pub tz: chrono_tz::Tz,
    pub clock: TestClock,
    pub client: Client,
    pub db: Database,
    /// The server of [`Env::own`], stopped with the `Env`.
    _server: Option<super::Server>,
}

impl Env {
    pub async fn new(prefix: &str, uri: String, zone: &str, now: DateTime<Utc>) -> Env {
        let name = super::unique_db(prefix);
        let client = Client::with_uri_str(&uri).await.expect("client");
        let db = client.database(&name);
        Env {
            uri,
            name,
            cal: Calendar::from_name(zone).expect("zone"),
            tz: zone.parse().expect("zone"),
            clock: TestClock::at(now),
            client,
            db,
            _server: None,
        }
    }

    /// [`Env::new`] on a server of this test's own (unless
    /// `TALLY_TEST_MONGODB_URI` names one): SecantusDB is one Python
    /// process, and a test whose timing is the point (a lease of a few
    /// seconds) must not wait behind another test's scans on a shared one.
    pub async fn own(prefix: &str, zone: &str, now: DateTime<Utc>) -> Env {
        match super::external_uri() {
            Some(uri) => Env::new(prefix, uri, zone, now).await,
            None => {
                let server = super::start_server(&[], None);
                let mut env = Env::new(prefix, server.uri(), zone, now).await;
                env._server = Some(server);
                env
            }
        }
    }

    pub fn today(&self) -> NaiveDate {
        self.cal.day_of(self.clock.now())
    }

    pub fn day(&self, offset: i64) -> NaiveDate {
        let t = self.today();
        if offset >= 0 {
            t + Days::new(offset as u64)
        } else {
            t - Days::new(offset.unsigned_abs())
        }
    }

    /// Local `hh:mm` of `day` as an instant.
    pub fn at(&self, day: NaiveDate, hh: u32, mm: u32) -> DateTime<Utc> {
        local_instant(
            self.tz,
            day,
            NaiveTime::from_hms_opt(hh, mm, 0).expect("time"),
        )
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
        c.args(args)
            .env("TALLY_MONGODB_URI", &self.uri)
            .env("TALLY_DATABASE", &self.name)
            .env("TALLY_TIMEZONE", self.cal.name())
            .env("TALLY_NOW", self.clock.rfc3339())
            // A restart after kill -9 waits for the dead instance's lease.
            .env("TALLY_LEASE_TTL", "5")
            .env("TALLY_LOG", "tally=info,warn")
            .env("TALLY_HTTP_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null());
        c
    }

    pub async fn tally(&self, args: &[&str]) -> std::process::Output {
        let mut c = tokio::process::Command::from(self.command(args));
        c.arg("--quiet").output().await.expect("tally runs")
    }

    /// Reconcile over what `tally run --initial-days days` manages (`days`
    /// before today to a month ahead): [`Env::caught_up`].
    pub async fn converged(&self, days: u64, runs: &[&Running]) -> Value {
        self.caught_up(self.day(-(days as i64)), self.day(30), runs)
            .await
    }

    /// Runs `reconcile --json` over [from, to], every kind of document,
    /// until it exits 0, then once more after the settle delay (a late
    /// wrong write would show there). Panics with the last report and the
    /// logs of `runs` after [`CATCH_UP`].
    pub async fn caught_up(&self, from: NaiveDate, to: NaiveDate, runs: &[&Running]) -> Value {
        let kinds = "reports,snapshots,monthly";
        let (from, to) = (from.to_string(), to.to_string());
        let deadline = Instant::now() + CATCH_UP;
        let mut clean_once = false;
        loop {
            let o = self
                .tally(&[
                    "reconcile",
                    "--from",
                    &from,
                    "--to",
                    &to,
                    "--kinds",
                    kinds,
                    "--json",
                ])
                .await;
            let code = o.status.code();
            let json: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
                Value::String(format!(
                    "exit {code:?}; stdout: {}; stderr: {}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ))
            });
            match code {
                Some(0) if clean_once => return json,
                Some(0) => {
                    clean_once = true;
                    tokio::time::sleep(Duration::from_millis(SETTLE_SECONDS * 1000 + 1500)).await;
                    continue;
                }
                _ => clean_once = false,
            }
            if Instant::now() > deadline {
                let mut text = serde_json::to_string_pretty(&json).unwrap_or_default();
                text.truncate(8000);
                let logs: String = runs
                    .iter()
                    .map(|r| format!("--- {} ---\n{}\n", r.label, r.tail(40)))
                    .collect();
                panic!(
                    "reconcile {from}..{to} ({kinds}) not clean after {CATCH_UP:?}:\n{text}\n{logs}"
                );
            }
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }

    pub async fn all(&self, coll: &str, filter: Document) -> Vec<Document> {
        self.db
            .collection::<Document>(coll)
            .find(filter)
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("cursor")
    }
}

/// A `tally` child process whose stderr goes to a log file. Dropping it
/// SIGKILLs it if still running; its log is kept when the test fails, or
/// with `TALLY_TEST_KEEP_LOGS` set.
pub struct Running {
    child: Child,
    log: PathBuf,
    pub label: String,
}

impl Running {
    /// Spawns `command` with stdout discarded and stderr written to
    /// `<target tmp>/<dir>/<name>-<label>.log` (kept when a test fails or
    /// `TALLY_TEST_KEEP_LOGS` is set).
    pub fn spawn(mut command: Command, dir: &str, name: &str, label: &str) -> Running {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(dir);
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{name}-{label}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("tally starts");
        Running {
            child,
            log,
            label: label.to_owned(),
        }
    }

    /// The log, without ANSI colours.
    pub fn log(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// The last `n` lines of the log.
    pub fn tail(&self, n: usize) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// How many times `needle` appears in the log.
    pub fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until `needle` appears in the log (panics if the process
    /// exits first or `timeout` passes).
    pub async fn wait_log(&mut self, needle: &str, timeout: Duration) {
        self.wait_count(needle, 1, timeout).await;
    }

    /// Waits until `needle` appears `n` times in the log.
    pub async fn wait_count(&mut self, needle: &str, n: usize, timeout: Duration) {
        poll(timeout, Duration::from_millis(50), async |late| {
            if self.count(needle) >= n {
                return Some(());
            }
            assert!(
                self.alive(),
                "{} exited while waiting for {needle:?}:\n{}",
                self.label,
                self.tail(40)
            );
            assert!(
                !late,
                "{} did not log {needle:?} ×{n} within {timeout:?}:\n{}",
                self.label,
                self.tail(40)
            );
            None
        })
        .await
    }

    /// The owner this process acquired the lease as (from its log).
    pub fn owner(&self) -> Option<String> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("Acquired leadership."))?;
        Some(line.split("owner=").nth(1)?.split(' ').next()?.to_owned())
    }

    /// How many times this process ran the step of `kind` for `period`.
    pub fn finalized(&self, kind: &str, period: &str) -> usize {
        let (k, p) = (format!("kind=\"{kind}\""), format!("period={period} "));
        self.log()
            .lines()
            .filter(|l| l.contains("Finalized.") && l.contains(&k) && l.contains(&p))
            .count()
    }

    /// Every `kind:period` this process finalized, in order.
    pub fn all_finalized(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("Finalized."))
            .filter_map(|l| {
                let kind = l.split("kind=\"").nth(1)?.split('"').next()?;
                let period = l.split("period=").nth(1)?.split(' ').next()?;
                Some(format!("{kind}:{period}"))
            })
            .collect()
    }

    /// SIGKILL: no flush, no checkpoint.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM, then the exit status (panics after 10 s).
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -TERM {pid}");
        match self.wait_exit(Duration::from_secs(10)).await {
            Some(status) => status,
            None => panic!(
                "{} still running 10 s after SIGTERM:\n{}",
                self.label,
                self.tail(40)
            ),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !std::thread::panicking() && std::env::var_os("TALLY_TEST_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Waits until one of `runs` logs `needle`; returns its index.
pub async fn first_to_log(runs: &mut [&mut Running], needle: &str, timeout: Duration) -> usize {
    poll(timeout, Duration::from_millis(50), async |late| {
        if let Some(i) = runs.iter().position(|r| r.log().contains(needle)) {
            return Some(i);
        }
        for r in runs.iter_mut() {
            assert!(r.alive(), "{} exited:\n{}", r.label, r.tail(30));
        }
        assert!(!late, "nobody logged {needle:?}");
        None
    })
    .await
}

/// Process control beyond kill -9 and SIGTERM-and-wait (used by
/// `tests/faults.rs`).
impl Running {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (a name `kill` knows: "STOP", "CONT", "TERM") to the
    /// child without waiting for anything.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// Waits up to `timeout` for the child to exit: its status, or `None`
    /// if it is still running then.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll(timeout, Duration::from_millis(20), async |late| match self
            .child
            .try_wait()
            .expect("try_wait")
        {
            Some(status) => Some(Some(status)),
            None if late => Some(None),
            None => None,
        })
        .await
    }
}

/// Retries a driver call while a restarted server comes back (up to
/// [`CATCH_UP`]).
pub async fn until_ok<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = mongodb::error::Result<T>>,
{
    poll(
        CATCH_UP,
        Duration::from_millis(500),
        async |late| match f().await {
            Ok(v) => Some(v),
            Err(e) if late => panic!("{what}: {e}"),
            Err(e) => {
                eprintln!("{what}: {e}; retrying");
                None
            }
        },
    )
    .await
}

/// A private server started with `args` and storage on disk (so it can be
/// stopped and restarted), its data directory, and an `Env` on it at
/// `now` whose server selection gives up after 1.5 s, so an outage shows
/// as errors instead of the driver waiting it out.
pub async fn env_on_own_server(
    prefix: &str,
    args: &[&str],
    now: &str,
) -> (super::Server, PathBuf, Env) {
    let dir = std::env::temp_dir().join(super::unique_db(&format!("tally-{prefix}")));
    let server = super::start_server(args, Some(&dir));
    let uri = format!("{}&serverSelectionTimeoutMS=1500", server.uri());
    let env = Env::new(prefix, uri, "UTC", instant(now)).await;
    (server, dir, env)
}

/// Waits until the restarted server answers a read.
pub async fn until_server_is_back(env: &Env) {
    until_ok("first read after the restart", || async {
        env.db
            .collection::<Document>("transactions")
            .count_documents(bson::doc! {})
            .await
    })
    .await;
}

impl Env {
    /// The resume token of the stored checkpoint, if any.
    pub async fn checkpoint_token(&self) -> Option<bson::Bson> {
        self.db
            .collection::<Document>("tally_state")
            .find_one(bson::doc! { "_id": "checkpoint" })
            .await
            .expect("checkpoint")
            .and_then(|d| d.get("resume_token").cloned())
            .filter(|t| *t != bson::Bson::Null)
    }
}
