//! Progress of a long run: a one-line bar redrawn on a terminal (users and
//! days done, rate, ETA), or a log line every few seconds otherwise.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    what: &'static str,
    days: u64,
    started: Instant,
    last: Instant,
    terminal: bool,
    enabled: bool,
}

impl Progress {
    /// `days` is the number of days each user's work covers.
    pub fn new(what: &'static str, days: u64, enabled: bool) -> Progress {
        let now = Instant::now();
        Progress {
            what,
            days,
            started: now,
            last: now,
            terminal: std::io::stderr().is_terminal(),
            enabled,
        }
    }

    /// Reports `done` users of an estimated `total`.
    pub fn update(&mut self, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        let period = if self.terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.elapsed() < period {
            return;
        }
        self.last = Instant::now();
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = done as f64 / elapsed.max(1e-9);
        let total = total.max(done);
        let eta = if rate > 0.0 {
            (total - done) as f64 / rate
        } else {
            0.0
        };
        if self.terminal {
            let width = 30;
            let filled = (done * width).checked_div(total).unwrap_or(0) as usize;
            eprint!(
                "\r{} [{}{}] {done}/{total} users × {} days  {rate:.0} users/s  ETA {eta:.0}s ",
                self.what,
                "#".repeat(filled),
                "-".repeat(width as usize - filled),
                self.days,
            );
            let _ = std::io::stderr().flush();
        } else {
            tracing::info!(
                done,
                total,
                days = self.days,
                rate = format!("{rate:.0}/s"),
                eta_s = eta.round() as u64,
                "{} in progress.",
                self.what
            );
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if self.enabled && self.terminal {
            eprint!("\r{:100}\r", "");
        }
    }
}
