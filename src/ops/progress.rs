//! Progress of a long run: an indicatif bar redrawn on a terminal (users
//! and days done, rate, ETA), or a log line every few seconds otherwise
//! (stderr a file or a pipe, or `TERM` unset or `dumb`).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the log line is written when there is no terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Most redraws of the bar per second.
const BAR_HZ: u8 = 5;

pub struct Progress {
    what: &'static str,
    days: u64,
    started: Instant,
    last: Instant,
    /// The bar when stderr is a terminal; `None`: log lines.
    bar: Option<ProgressBar>,
    enabled: bool,
}

impl Progress {
    /// `days` is the number of days each user's work covers.
    pub fn new(what: &'static str, days: u64, enabled: bool) -> Progress {
        let target = ProgressDrawTarget::stderr_with_hz(BAR_HZ);
        let bar = (enabled && !target.is_hidden()).then(|| bar(what, days, target));
        let now = Instant::now();
        Progress {
            what,
            days,
            started: now,
            last: now,
            bar,
            enabled,
        }
    }

    /// Reports `done` users of an estimated `total`.
    pub fn update(&mut self, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        let total = total.max(done);
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
            return;
        }
        if self.last.elapsed() < LOG_EVERY {
            return;
        }
        self.last = Instant::now();
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = done as f64 / elapsed.max(1e-9);
        let eta = if rate > 0.0 {
            (total - done) as f64 / rate
        } else {
            0.0
        };
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

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `backfill [######------] 120/400 users × 31 days  57/s  ETA 5s`
fn bar(what: &'static str, days: u64, target: ProgressDrawTarget) -> ProgressBar {
    let template = format!(
        "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} users × {days} days  {{per_sec:0}}  ETA {{eta}}"
    );
    let style = ProgressStyle::with_template(&template)
        .expect("a valid template")
        .progress_chars("#-");
    ProgressBar::with_draw_target(None, target)
        .with_style(style)
        .with_prefix(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_follows_done_and_the_total_never_below_it() {
        let mut p = Progress::new("backfill", 31, true);
        p.bar = Some(bar("backfill", 31, ProgressDrawTarget::hidden()));
        p.update(10, 400);
        let b = p.bar.clone().unwrap();
        assert_eq!((b.position(), b.length()), (10, Some(400)));
        p.update(450, 400);
        assert_eq!((b.position(), b.length()), (450, Some(450)));
        p.finish();
        assert!(b.is_finished());
    }

    #[test]
    fn disabled_shows_nothing() {
        let mut p = Progress::new("reconcile", 3, false);
        assert!(p.bar.is_none());
        p.update(1, 2);
        p.finish();
    }
}
