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
//!   the least any fold must do (memory traffic plus one decimal add);
//! - `change_events/decode_change_event`: raw change-stream events (BSON
//!   bytes as the server sends them: resume token, operationType, ns,
//!   documentKey, fullDocument in the shapes contract §1.1 accepts,
//!   wallTime, clusterTime; one in ten an update with its
//!   updateDescription) deserialized into the driver's
//!   `ChangeStreamEvent<Document>`, then the transaction decoded
//!   (how `tally run` read events before); `deserialize_only` without the
//!   decode; `raw_then_decode` is what `tally run` does now (target
//!   ≥ 200,000 events/s on one core): the stream typed `RawDocumentBuf`,
//!   the fields read in place by `tally::service::Event::from_raw`, the
//!   documents' fields too (`tally::core::source::RawFields`);
//! - `finalize_docs/snapshot_and_monthly`: what a finalization builds per
//!   user from its ledger — the snapshot of the month's last day and the
//!   month's summary through `UserView` (`…_encoded`: also encoded to BSON
//!   bytes, as a write sends them); throughput in users.
//!
//! Run: `cargo bench --bench ledger`. Times are the CPU time of the bench
//! thread (`CLOCK_THREAD_CPUTIME_ID`), so another process on the machine
//! does not inflate them by taking the core away (it still shares the
//! caches); `TALLY_BENCH_CLOCK=wall` measures wall-clock time instead.
//! Figures are recorded in BENCHMARKS.md.

mod common;

use common::cpu::ThreadCpuTime;
use std::collections::HashMap;
use std::time::Duration;

use std::collections::BTreeMap;

use bson::oid::ObjectId;
use bson::{doc, Bson, Document};
use criterion::measurement::{Measurement, WallTime};
use criterion::{black_box, Criterion, Throughput};
use mongodb::change_stream::event::ChangeStreamEvent;
use tally::core::calendar::{last_of_month, Calendar};
use tally::core::ledger::UserLedger;
use tally::core::money::Money;
use tally::core::reports::{Categories, UserView};
use tally::core::rng::Rng;
use tally::core::source::{decode_transaction, Pocket, Transaction};

const N: usize = 200_000;
const USERS: usize = 1000;
/// Change events decoded per iteration.
const EVENTS: usize = 50_000;

/// Users, their 3 pockets each, and 10 categories, fixed for one run.
struct Ids {
    users: Vec<ObjectId>,
    pockets: Vec<ObjectId>,
    cats: Vec<ObjectId>,
}

fn ids() -> &'static Ids {
    static IDS: std::sync::OnceLock<Ids> = std::sync::OnceLock::new();
    IDS.get_or_init(|| Ids {
        users: (0..USERS).map(|_| ObjectId::new()).collect(),
        pockets: (0..3 * USERS).map(|_| ObjectId::new()).collect(),
        cats: (0..10).map(|_| ObjectId::new()).collect(),
    })
}

fn documents(n: usize) -> Vec<Document> {
    let mut rng = Rng::new(7);
    let Ids {
        users,
        pockets,
        cats,
    } = ids();
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

/// A transaction document in one of the shapes contract §1.1 accepts:
/// amounts as Decimal128, double, int32 or a numeric string; legacy type
/// names and pocket field names; bookkeeping fields the API writes.
fn spec_shaped(rng: &mut Rng, mut d: Document) -> Document {
    let amount = Money::from_bson(d.get("amount").expect("amount")).expect("money");
    match rng.below(10) {
        0..=5 => {}
        6 | 7 => {
            d.insert(
                "amount",
                Bson::Double(amount.to_string().parse().expect("f64")),
            );
        }
        8 => {
            d.insert("amount", Bson::String(format!(" {amount} ")));
        }
        _ => {
            d.insert("amount", Bson::Int32(1 + rng.below(500) as i32));
        }
    }
    if rng.chance(5) {
        let legacy = match d.get_str("type").expect("type") {
            "income" => "INCOME",
            "expense" => "EXPENSE",
            "transfer" => "TRANSFER",
            _ => "DEBT_PAYMENT",
        };
        d.insert("type", legacy);
    }
    if rng.chance(5) {
        for (new, old) in [
            ("pocket_from_id", "pocket_from"),
            ("pocket_to_id", "pocket_to"),
        ] {
            if let Some(v) = d.remove(new) {
                d.insert(old, v);
            }
        }
    }
    let date = *d.get_datetime("date").expect("date");
    d.insert("created_at", date);
    d.insert("updated_at", date);
    d.insert("deleted_at", Bson::Null);
    d
}

/// Raw change events, as the server sends them, for `n` transactions.
fn change_events(n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(99);
    documents(n)
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let d = spec_shaped(&mut rng, d);
            let id = d.get_object_id("_id").expect("id");
            let wall = d.get_datetime("date").expect("date").timestamp_millis() + 5;
            let token: String = (0..6).map(|_| format!("{:016X}", rng.next_u64())).collect();
            let mut event = doc! {
                "_id": { "_data": format!("82{token}2B042C0100296E5A1004{}46645F696400", id.to_hex().to_uppercase()) },
                "operationType": "insert",
                "clusterTime": Bson::Timestamp(bson::Timestamp { time: (wall / 1000) as u32, increment: 1 + (i % 7) as u32 }),
                "wallTime": bson::DateTime::from_millis(wall),
                "fullDocument": d.clone(),
                "ns": { "db": "coin", "coll": "transactions" },
                "documentKey": { "_id": id },
            };
            if i % 10 == 9 {
                // An edit: `fullDocument: updateLookup` and what changed.
                event.insert("operationType", "update");
                event.insert(
                    "updateDescription",
                    doc! {
                        "updatedFields": { "amount": d.get("amount").cloned().unwrap_or(Bson::Null), "updated_at": d.get("updated_at").cloned().unwrap_or(Bson::Null) },
                        "removedFields": [],
                        "truncatedArrays": [],
                    },
                );
            }
            bson::to_vec(&event).expect("encode")
        })
        .collect()
}

/// Per user: the ledger of its transactions, its pockets (balances made
/// up), ready for `UserView`.
fn user_states(
    txs: &[Transaction],
    cal: &Calendar,
) -> Vec<(ObjectId, UserLedger, BTreeMap<ObjectId, Pocket>)> {
    let Ids { users, pockets, .. } = ids();
    let mut ledgers: HashMap<ObjectId, UserLedger> = HashMap::new();
    for t in txs {
        ledgers.entry(t.user_id).or_default().apply(cal, t);
    }
    users
        .iter()
        .enumerate()
        .map(|(u, user)| {
            let own: BTreeMap<ObjectId, Pocket> = (0..3)
                .map(|k| {
                    let id = pockets[u * 3 + k];
                    let pocket = Pocket {
                        id,
                        user_id: Some(*user),
                        name: Some(format!("pocket {k}")),
                        kind: Some(["main", "saving", "allocation"][k].to_owned()),
                        balance: Ok(Money::new(rust_decimal::Decimal::new(
                            1_000_000 + k as i64,
                            2,
                        ))),
                        created_at: None,
                        deleted_at: None,
                    };
                    (id, pocket)
                })
                .collect();
            (*user, ledgers.remove(user).unwrap_or_default(), own)
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

    let events = change_events(EVENTS);
    let mut g = c.benchmark_group("change_events");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("decode_change_event", |b| {
        b.iter(|| {
            events
                .iter()
                .filter(|raw| {
                    let event: ChangeStreamEvent<Document> =
                        bson::from_slice(raw).expect("a change event");
                    event
                        .full_document
                        .as_ref()
                        .is_some_and(|d| decode_transaction(d).is_ok())
                })
                .count()
        });
    });
    g.bench_function("raw_then_decode", |b| {
        // What `tally run` does: the stream typed as raw documents, the
        // fields read in place (`tally::service::Event::from_raw`), the
        // documents too (`RawFields`).
        b.iter(|| {
            events
                .iter()
                .filter(|raw| {
                    let raw = bson::RawDocument::from_bytes(raw).expect("a change event");
                    let event = tally::service::Event::from_raw(raw).expect("a change event");
                    event
                        .full_document
                        .as_ref()
                        .is_some_and(|d| decode_transaction(d).is_ok())
                })
                .count()
        });
    });
    g.bench_function("deserialize_only", |b| {
        b.iter(|| {
            events
                .iter()
                .map(|raw| {
                    let event: ChangeStreamEvent<Document> =
                        bson::from_slice(raw).expect("a change event");
                    event.full_document.map_or(0, |d| d.len())
                })
                .sum::<usize>()
        });
    });
    g.finish();

    // A finalization at the end of February: the snapshot of the 28th and
    // the month's summary, per user, from ledgers of two months.
    let states = user_states(&txs, &cal);
    let categories = Categories(
        ids()
            .cats
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, format!("category {i}")))
            .collect(),
    );
    let day: chrono::NaiveDate = "2026-02-28".parse().expect("date");
    let build = |encode: bool| {
        let mut n = 0usize;
        for (user, ledger, pockets) in &states {
            let view = UserView::new(*user, ledger, pockets.values(), &categories, &cal);
            let snapshot = view.snapshot(day);
            let monthly = view.monthly(last_of_month(day), true);
            for d in snapshot.iter().chain(monthly.iter()) {
                n += if encode {
                    bson::to_vec(d).expect("encode").len()
                } else {
                    d.len()
                };
            }
        }
        n
    };
    let mut g = c.benchmark_group("finalize_docs");
    g.throughput(Throughput::Elements(states.len() as u64));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("snapshot_and_monthly", |b| b.iter(|| build(false)));
    g.bench_function("snapshot_and_monthly_encoded", |b| b.iter(|| build(true)));
    g.finish();
}

fn main() {
    let wall = std::env::var("TALLY_BENCH_CLOCK").is_ok_and(|v| v == "wall");
    if wall || ThreadCpuTime::now().is_none() {
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
