//! Hot paths of the pure core, measured against a baseline in the same run:
//! - `fold`: transactions folded into per-(user, day, pocket) ledgers
//!   (target ≥ 1,000,000 transactions/s on one core);
//! - `decode`: raw transaction documents decoded into typed values;
//! - `baseline_sum`: the same transactions' amounts summed into one total,
//!   the least any fold must do (memory traffic plus one decimal add).
//!
//! Run: `cargo bench --bench ledger`.

use std::collections::HashMap;

use bson::oid::ObjectId;
use bson::{doc, Document};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use tally::calendar::Calendar;
use tally::ledger::UserLedger;
use tally::money::Money;
use tally::seed::Rng;
use tally::source::{decode_transaction, Transaction};

const N: usize = 200_000;

fn documents(n: usize) -> Vec<Document> {
    let mut rng = Rng::new(7);
    let users: Vec<ObjectId> = (0..1000).map(|_| ObjectId::new()).collect();
    let pockets: Vec<ObjectId> = (0..3000).map(|_| ObjectId::new()).collect();
    let cats: Vec<ObjectId> = (0..10).map(|_| ObjectId::new()).collect();
    let start = 1_767_225_600_000_i64; // 2026-01-01
    (0..n)
        .map(|i| {
            let u = rng.below(1000) as usize;
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

fn bench(c: &mut Criterion) {
    let cal = Calendar::from_name("America/New_York").unwrap();
    let docs = documents(N);
    let txs: Vec<Transaction> = docs
        .iter()
        .map(|d| decode_transaction(d).unwrap())
        .collect();
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
    g.bench_function("decode", |b| {
        b.iter(|| {
            docs.iter()
                .filter(|d| decode_transaction(d).is_ok())
                .count()
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
