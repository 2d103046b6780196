//! Hot paths of the pure core, measured against a baseline in the same run:
//! - `fold`: transactions folded into per-(user, day, pocket) ledgers, in
//!   random user and day order, ledgers dropped inside the timing
//!   (target ≥ 1,000,000 transactions/s on one core);
//! - `fold_no_drop`: `fold` without the time to drop the ledgers (criterion's
//!   `iter_with_large_drop`), to show what freeing costs;
//! - `fold_time_order`: the same transactions in date order (the order a
//!   live stream delivers them), all users' ledgers at once;
//! - `fold_scan_order`: the same transactions in the order a backfill scan
//!   reads them (sorted by user, then date), one user's ledger at a time;
//! - `day_of_millis`: the day of each transaction's date in the zone;
//! - `decode`: raw transaction documents decoded into typed values;
//! - `baseline_sum`: the same transactions' amounts summed into one total,
//!   the least any fold must do (memory traffic plus one decimal add).
//!
//! Run: `cargo bench --bench ledger`. Times are the CPU time of the bench
//! thread (`CLOCK_THREAD_CPUTIME_ID`), so another process on the machine
//! does not inflate them by taking the core away (it still shares the
//! caches); `TALLY_BENCH_CLOCK=wall` measures wall-clock time instead.
//! Figures are recorded in BENCHMARKS.md.

use std::collections::HashMap;
use std::time::Duration;

use bson::oid::ObjectId;
use bson::{doc, Document};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{black_box, Criterion, Throughput};
use tally::calendar::Calendar;
use tally::ledger::UserLedger;
use tally::money::Money;
use tally::seed::Rng;
use tally::source::{decode_transaction, Transaction};

const N: usize = 200_000;
const USERS: usize = 1000;

fn documents(n: usize) -> Vec<Document> {
    let mut rng = Rng::new(7);
    let users: Vec<ObjectId> = (0..USERS).map(|_| ObjectId::new()).collect();
    let pockets: Vec<ObjectId> = (0..3 * USERS).map(|_| ObjectId::new()).collect();
    let cats: Vec<ObjectId> = (0..10).map(|_| ObjectId::new()).collect();
    let start = 1_767_225_600_000_i64; // 2026-01-01
    (0..n)
        .map(|i| {
            let u = rng.below(USERS as u64) as usize;
            let kind = ["income", "expense", "expense", "transfer", "dp"][rng.below(5) as usize];
            let amount = rust_decimal::Decimal::new(100 + rng.below(50_000) as i64, 2);
            doc! {
                "_id": ObjectId::new(),
                "user_id": users[u],
                "type": kind,
                "amount": Money::new(amount).to_bson(),
                "pocket_from_id": pockets[u * 3 + rng.below(3) as usize],
                "pocket_to_id": pockets[u * 3 + rng.below(3) as usize],
                "category_id": cats[rng.below(10) as usize],
                "note": if i % 3 == 0 { bson::Bson::String("lunch".into()) } else { bson::Bson::Null },
                "date": bson::DateTime::from_millis(start + rng.below(60 * 86_400_000) as i64),
            }
        })
        .collect()
}

fn bench<M: Measurement>(c: &mut Criterion<M>) {
    let cal = Calendar::from_name("America/New_York").unwrap();
    let docs = documents(N);
    let txs: Vec<Transaction> = docs
        .iter()
        .map(|d| decode_transaction(d).unwrap())
        .collect();
    let mut time_order = txs.clone();
    time_order.sort_by_key(|t| t.date);
    let mut scan_order = txs.clone();
    scan_order.sort_by_key(|t| (t.user_id.bytes(), t.date));
    let mut g = c.benchmark_group("ledger");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    g.bench_function("baseline_sum", |b| {
        b.iter(|| black_box(txs.iter().map(|t| t.amount).sum::<Money>()));
    });
    g.bench_function("fold", |b| {
        b.iter(|| {
            let mut ledgers: HashMap<ObjectId, UserLedger> = HashMap::new();
            for t in &txs {
                ledgers.entry(t.user_id).or_default().apply(&cal, t);
            }
            black_box(ledgers.len())
        });
    });
    g.bench_function("fold_no_drop", |b| {
        b.iter_with_large_drop(|| {
            let mut ledgers: HashMap<ObjectId, UserLedger> = HashMap::new();
            for t in &txs {
                ledgers.entry(t.user_id).or_default().apply(&cal, t);
            }
            ledgers
        });
    });
    g.bench_function("fold_time_order", |b| {
        b.iter(|| {
            let mut ledgers: HashMap<ObjectId, UserLedger> = HashMap::new();
            for t in &time_order {
                ledgers.entry(t.user_id).or_default().apply(&cal, t);
            }
            black_box(ledgers.len())
        });
    });
    g.bench_function("fold_scan_order", |b| {
        b.iter(|| {
            let mut days = 0;
            let mut i = 0;
            while i < scan_order.len() {
                let user = scan_order[i].user_id;
                let mut ledger = UserLedger::default();
                while let Some(t) = scan_order.get(i).filter(|t| t.user_id == user) {
                    ledger.apply(&cal, t);
                    i += 1;
                }
                days += black_box(&ledger).days.len();
            }
            days
        });
    });
    g.bench_function("day_of_millis", |b| {
        b.iter(|| txs.iter().map(|t| cal.day_of_millis(t.date)).max());
    });
    g.bench_function("decode", |b| {
        b.iter(|| {
            docs.iter()
                .filter(|d| decode_transaction(d).is_ok())
                .count()
        });
    });
    g.finish();
}

fn main() {
    let wall = std::env::var("TALLY_BENCH_CLOCK").is_ok_and(|v| v == "wall");
    if wall || !ThreadCpuTime::available() {
        eprintln!("ledger bench: wall-clock time");
        let mut c = Criterion::default()
            .with_measurement(WallTime)
            .configure_from_args();
        bench(&mut c);
        c.final_summary();
    } else {
        eprintln!("ledger bench: CPU time of the bench thread");
        let mut c = Criterion::default()
            .with_measurement(ThreadCpuTime)
            .configure_from_args();
        bench(&mut c);
        c.final_summary();
    }
}

/// CPU time consumed by the calling thread.
struct ThreadCpuTime;

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
}

/// `CLOCK_THREAD_CPUTIME_ID` on Linux.
const CLOCK_THREAD_CPUTIME_ID: i32 = 3;

impl ThreadCpuTime {
    fn now() -> Option<Duration> {
        if !cfg!(all(target_os = "linux", target_pointer_width = "64")) {
            return None;
        }
        let mut ts = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec (two 64-bit fields on
        // 64-bit Linux) and the clock id is a constant the kernel knows.
        let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    fn available() -> bool {
        Self::now().is_some()
    }
}

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        Self::now().unwrap_or_default()
    }

    fn end(&self, started: Duration) -> Duration {
        Self::now().unwrap_or_default().saturating_sub(started)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

/// Formats nanoseconds of CPU time like criterion's wall-clock formatter.
struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical < 1e3 {
            (1.0, "ns cpu")
        } else if typical < 1e6 {
            (1e-3, "µs cpu")
        } else if typical < 1e9 {
            (1e-6, "ms cpu")
        } else {
            (1e-9, "s cpu")
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(
        &self,
        typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let n = match *throughput {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => n,
        } as f64;
        let per_second = n * 1e9 / typical;
        let (denominator, unit) = if per_second < 1e3 {
            (1.0, " elem/s")
        } else if per_second < 1e6 {
            (1e3, "Kelem/s")
        } else {
            (1e6, "Melem/s")
        };
        values
            .iter_mut()
            .for_each(|v| *v = n * 1e9 / *v / denominator);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}
