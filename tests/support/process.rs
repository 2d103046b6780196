//! `tally` as a child process for the integration tests: a clock that
//! starts at a chosen instant (passed to the binary as `TALLY_NOW`), and a
//! running process whose log the tests read and wait on.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

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
        let deadline = Instant::now() + timeout;
        while self.count(needle) < n {
            assert!(
                self.alive(),
                "{} exited while waiting for {needle:?}:\n{}",
                self.label,
                self.tail(40)
            );
            assert!(
                Instant::now() < deadline,
                "{} did not log {needle:?} ×{n} within {timeout:?}:\n{}",
                self.label,
                self.tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running 10 s after SIGTERM:\n{}",
                self.label,
                self.tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
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
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(i) = runs.iter().position(|r| r.log().contains(needle)) {
            return i;
        }
        for r in runs.iter_mut() {
            assert!(r.alive(), "{} exited:\n{}", r.label, r.tail(30));
        }
        assert!(Instant::now() < deadline, "nobody logged {needle:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
