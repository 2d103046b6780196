//! The two kinds of series [`Telemetry`](super::Telemetry) is made of: a
//! counter per static label set (an atomic add under a read lock; the write
//! lock only for a label set's first use), and a histogram with fixed
//! bucket bounds (atomics only).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

/// A counter per label set; label values are static, so the set is bounded.
pub struct CounterVec<const N: usize> {
    series: RwLock<Vec<([&'static str; N], AtomicU64)>>,
}

impl<const N: usize> CounterVec<N> {
    pub(crate) fn new() -> Self {
        CounterVec {
            series: RwLock::new(Vec::new()),
        }
    }

    pub fn add(&self, labels: [&'static str; N], n: u64) {
        {
            let series = self.series.read().unwrap_or_else(|e| e.into_inner());
            if let Some((_, c)) = series.iter().find(|(l, _)| *l == labels) {
                c.fetch_add(n, Ordering::Relaxed);
                return;
            }
        }
        let mut series = self.series.write().unwrap_or_else(|e| e.into_inner());
        match series.iter().find(|(l, _)| *l == labels) {
            Some((_, c)) => {
                c.fetch_add(n, Ordering::Relaxed);
            }
            None => series.push((labels, AtomicU64::new(n))),
        }
    }

    /// Every series, sorted by labels.
    pub fn values(&self) -> Vec<([&'static str; N], u64)> {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = series
            .iter()
            .map(|(l, c)| (*l, c.load(Ordering::Relaxed)))
            .collect();
        out.sort();
        out
    }

    pub fn sum(&self) -> u64 {
        self.values().iter().map(|(_, v)| v).sum()
    }
}

/// A histogram with fixed upper bounds (seconds).
pub struct Histogram {
    pub bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the last is +Inf), and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut acc = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|c| {
                acc += c.load(Ordering::Relaxed);
                acc
            })
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (cumulative, sum)
    }
}
