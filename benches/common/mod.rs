//! Shared by the benches that run against a real server (`backfill`,
//! `nightly`): sizes from the environment, CPU time of the server and of
//! tally per phase (from `/proc/<pid>/stat`), a bare cursor scan as the
//! floor every read is compared with, and the `@row` lines `scripts/bench`
//! collects into one markdown table.
//!
//! SecantusDB is a Python server that does one thing at a time, so its CPU
//! time is the floor of every phase: each figure is printed with the CPU
//! time the server and tally spent in it, which says what bounds it.
#![allow(dead_code)]

pub mod cpu;
// The tests' own HTTP helper (benches that also load `tests/support` see
// the file twice, in two module trees: the same code, not a copy).
#[allow(clippy::duplicate_mod)]
#[path = "../../tests/support/http.rs"]
pub mod http;

use std::time::{Duration, Instant};

use bson::{doc, Document};
use futures::TryStreamExt;
use mongodb::options::Hint;
use mongodb::Database;

/// `tally run --initial-days 2` against database `db` on `uri` (with
/// `--no-pre-images` unless `pre_images`), run by [`tally_bin`]; the
/// caller adds its own flags, environment and output.
pub fn tally_run(uri: &str, db: &str, pre_images: bool) -> std::process::Command {
    let mut cmd = std::process::Command::new(tally_bin());
    cmd.args(["run", "--initial-days", "2"])
        .env("TALLY_MONGODB_URI", uri)
        .env("TALLY_DATABASE", db)
        .stdout(std::process::Stdio::null());
    if !pre_images {
        cmd.arg("--no-pre-images");
    }
    cmd
}

/// The `tally` binary the benches run: `TALLY_BENCH_TALLY_BIN` (another
/// build, for a before/after run) or the one cargo built with the bench.
pub fn tally_bin() -> String {
    std::env::var("TALLY_BENCH_TALLY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_tally").to_owned())
}

/// True under `cargo bench` (criterion-style `--bench` argument); false
/// under `cargo test --all-targets`, where the benches run a tiny smoke size.
pub fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A size from the environment, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) of a process (`"self"` or a pid), from
/// `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// A `kB` field of `/proc/<pid>/status` (e.g. `VmHWM`, `VmRSS`), in bytes.
pub fn status_bytes(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kb: u64 = line[field.len() + 1..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The local SecantusDB process listening on the URI's port, if any.
pub fn server_pid(uri: &str) -> Option<String> {
    let port = uri
        .split("127.0.0.1:")
        .nth(1)?
        .split(['/', '?'])
        .next()?
        .to_owned();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_server = args.iter().any(|a| a.ends_with("secantusd-py"))
            && !args.iter().any(|a| a == "-c") // not the watchdog
            && args.windows(2).any(|w| w[0] == "--port" && w[1] == port);
        if is_server {
            return Some(pid);
        }
    }
    None
}

/// Wall time, server CPU and tally CPU of one phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct Phase {
    pub wall: Duration,
    pub server: Option<f64>,
    /// CPU of the process doing tally's (or the baseline's) side of the phase.
    pub own: f64,
}

pub struct Meter {
    pub server_pid: Option<String>,
}

impl Meter {
    pub fn new(uri: &str) -> Meter {
        Meter {
            server_pid: server_pid(uri),
        }
    }

    pub fn server_cpu(&self) -> Option<f64> {
        self.server_pid.as_deref().and_then(cpu_seconds)
    }

    /// Runs `f` in this process and measures it.
    pub async fn run<T>(&self, f: impl std::future::Future<Output = T>) -> (T, Phase) {
        let server = self.server_cpu();
        let own = cpu_seconds("self").unwrap_or(0.0);
        let started = Instant::now();
        let out = f.await;
        let phase = Phase {
            wall: started.elapsed(),
            server: server.and_then(|s0| Some(self.server_cpu()? - s0)),
            own: cpu_seconds("self").unwrap_or(0.0) - own,
        };
        (out, phase)
    }
}

impl Phase {
    pub fn cpu(&self) -> String {
        match self.server {
            Some(s) => format!("server cpu {s:>6.2} s, tally cpu {:>5.2} s", self.own),
            None => format!("tally cpu {:>5.2} s", self.own),
        }
    }

    /// What bounds the phase, from the CPU each side spent in it: the
    /// server (a single-threaded Python process) when it was busy most of
    /// the wall time, tally when it spent more CPU than the server.
    pub fn bound(&self, who: &str) -> String {
        let wall = self.wall.as_secs_f64().max(1e-9);
        match self.server {
            Some(s) => {
                let verdict = if s >= self.own && s >= 0.5 * wall {
                    "server".to_owned()
                } else if self.own > s && self.own >= 0.5 * wall {
                    who.to_owned()
                } else {
                    "round trips / waiting (neither side busy)".to_owned()
                };
                format!(
                    "{verdict}: server cpu {s:.2} s ({:.0}% of wall), {who} cpu {:.2} s",
                    100.0 * s / wall,
                    self.own
                )
            }
            None => format!(
                "{who} cpu {:.2} s (server not local: no server cpu)",
                self.own
            ),
        }
    }
}

/// Sections of the table `scripts/bench` prints, in its order.
pub const BASELINE: u8 = 1;
pub const FINALIZE: u8 = 2;
pub const BACKFILL: u8 = 3;
pub const MEMORY: u8 = 4;
pub const TAIL: u8 = 5;
pub const REWRITES: u8 = 6;
pub const NIGHT: u8 = 7;
pub const DELETES: u8 = 8;

/// One row of the table `scripts/bench` prints (`@row <section> | figure |
/// value | bound by |`; the script orders rows by section, stably).
pub fn row(section: u8, figure: &str, value: &str, bound: &str) {
    println!("@row {section} | {figure} | {value} | {bound} |");
}

/// Seconds with 2 decimals (3 below 1 s).
pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{s:.3} s")
    } else {
        format!("{s:.2} s")
    }
}

/// Reads every document of `coll` matching `filter`, doing nothing with
/// them; with `sorted`, the way the scan reads it (sorted by user_id, the
/// (user_id, `field`) index hinted).
pub async fn bare_scan(db: &Database, coll: &str, filter: Document, sorted: Option<&str>) -> u64 {
    let collection = db.collection::<Document>(coll);
    let mut find = collection.find(filter).batch_size(10_000);
    if let Some(field) = sorted {
        find = find
            .sort(doc! { "user_id": 1 })
            .hint(Hint::Keys(doc! { "user_id": 1, field: 1 }));
    }
    let mut cursor = find.await.expect("scan");
    let mut n = 0;
    while let Some(d) = cursor.try_next().await.expect("scan") {
        n += u64::from(!d.is_empty());
    }
    n
}

/// The number of a field ` name=value` of a tally log line.
pub fn log_field(line: &str, name: &str) -> Option<u64> {
    line.split(&format!(" {name}="))
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `elapsed_ms`, `documents` and `closed_only` of a log line of `tally run`
/// if it is the "Finalized." line of (kind as the CLI names it, period).
pub fn finalized(line: &str, kind: &str, period: &str) -> Option<(u64, u64, u64)> {
    let wanted = line.contains("Finalized.")
        && line.contains(&format!("kind=\"{kind}\""))
        && line.contains(&format!("period={period}"));
    if !wanted {
        return None;
    }
    let field = |name: &str| log_field(line, name);
    Some((
        field("elapsed_ms")?,
        field("documents")?,
        field("closed_only").unwrap_or(0),
    ))
}

/// The transaction ids a daily report lists, pocket by pocket.
pub fn listed_ids(report: &Document) -> Vec<bson::oid::ObjectId> {
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

/// Waits until `tally run` has stored its first checkpoint (it streams).
pub async fn wait_started(db: &Database) {
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

/// `GET /metrics` of a `tally run` serving HTTP on `port` (the body), or
/// `None` when it does not answer.
pub fn scrape(port: u16) -> Option<String> {
    http::get(port, "/metrics").map(|(_, body)| body)
}

/// A histogram's cumulative buckets in a scrape: (upper bound, count),
/// `+Inf` last.
pub fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// Every series of counter `name` in a `/metrics` text: its labels as
/// written (`command="update",collection="x"`) and its value.
pub fn labelled(text: &str, name: &str) -> std::collections::BTreeMap<String, f64> {
    let prefix = format!("{name}{{");
    text.lines()
        .filter_map(|l| {
            let (labels, value) = l.strip_prefix(&prefix)?.split_once("} ")?;
            Some((labels.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound under which quantile `q` of the observations between
/// two scrapes' buckets lies (`after` − `before`), and how many there were.
pub fn quantile_bound(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> (f64, f64) {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            let was = before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            (le, n - was)
        })
        .collect();
    let total = delta.last().map_or(0.0, |b| b.1);
    let bound = delta
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map_or(f64::INFINITY, |b| b.0);
    (bound, total)
}
