//! A synthetic coin-shaped dataset: users, pockets, categories and
//! transactions over a date range, with the dirt real data has — legacy
//! field names and types, odd number encodings, invalid documents, soft
//! deletes, a pocket opened mid-range, a deleted pocket, and a few pockets
//! whose balance includes an opening amount no transaction explains.
//!
//! By default it writes the way the API does: each transaction first, then
//! each pocket balance with `$set`. `bulk` writes the same final state in
//! bulk, for large benchmark datasets. Deterministic for a given `seed`.

use std::collections::HashMap;
use std::str::FromStr;

use crate::error::{Context, Result};
use bson::oid::ObjectId;
use bson::{doc, Bson, DateTime as BsonDateTime, Decimal128, Document};
use chrono::NaiveDate;
use futures::future::try_join_all;
use mongodb::Database;

use crate::core::calendar::Calendar;
use crate::core::money::Money;
pub use crate::core::rng::Rng;
use crate::mongo::{CATEGORIES, POCKETS, TRANSACTIONS};

#[derive(Clone, Debug)]
pub struct SeedOptions {
    pub users: usize,
    pub transactions_per_user: usize,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub seed: u64,
    pub bulk: bool,
}

#[derive(Debug, Default)]
pub struct SeedSummary {
    pub users: usize,
    pub pockets: usize,
    pub transactions: usize,
    pub invalid: usize,
    pub soft_deleted: usize,
}

/// A deterministic ObjectId: 4 bytes of a tag, 8 of a counter.
fn oid(tag: u32, n: u64) -> ObjectId {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&tag.to_be_bytes());
    b[4..].copy_from_slice(&n.to_be_bytes());
    ObjectId::from_bytes(b)
}

/// Ids of users, pockets and transactions also carry the seed, so seeding
/// twice with different seeds adds new users instead of colliding.
fn seeded(tag: u32, seed: u64, n: u64) -> ObjectId {
    oid(tag ^ ((seed as u32) << 16), n)
}

const CATEGORY_NAMES: [&str; 10] = [
    "Salary",
    "Groceries",
    "Rent",
    "Transport",
    "Dining",
    "Health",
    "Utilities",
    "Gifts",
    "Travel",
    "Freelance",
];

struct SeedPocket {
    doc: Document,
    balance: Money,
}

/// One user's documents, in the order the API would write them.
struct UserData {
    pockets: Vec<SeedPocket>,
    /// (transaction, pocket balance updates after it as (pocket, new balance)).
    steps: Vec<(Document, Vec<(ObjectId, Money)>)>,
}

pub async fn seed(db: &Database, cal: &Calendar, opts: &SeedOptions) -> Result<SeedSummary> {
    let categories: Vec<Document> = CATEGORY_NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| doc! { "_id": oid(0xCA7E, i as u64), "name": *n })
        .collect();
    for c in categories {
        db.collection::<Document>(CATEGORIES)
            .replace_one(doc! { "_id": c.get("_id") }, &c)
            .upsert(true)
            .await
            .context("writing user_categories")?;
    }

    let mut summary = SeedSummary {
        users: opts.users,
        ..SeedSummary::default()
    };
    let mut users = Vec::with_capacity(opts.users);
    for u in 0..opts.users {
        let data = make_user(cal, opts, u as u64, &mut summary);
        summary.pockets += data.pockets.len();
        users.push(data);
    }
    if opts.bulk {
        write_bulk(db, users).await?;
    } else {
        write_like_the_api(db, users).await?;
    }
    Ok(summary)
}

fn make_user(cal: &Calendar, opts: &SeedOptions, u: u64, summary: &mut SeedSummary) -> UserData {
    let mut rng = Rng::new(opts.seed ^ (u.wrapping_mul(0x2545_F491_4F6C_DD1D)));
    let user = seeded(0x05E4, opts.seed, u);
    let range_start = cal.day_start(opts.from).timestamp_millis();
    let range_end = cal.day_end(opts.to).timestamp_millis();
    let span = (range_end - range_start).max(1) as u64;
    let kinds = ["main", "saving", "allocation", "debt"];
    let n_pockets = 1 + rng.below(3) as usize;
    let mut pockets: Vec<SeedPocket> = (0..n_pockets)
        .map(|i| {
            let id = seeded(0x90C7, opts.seed, u * 8 + i as u64);
            let mut doc = doc! {
                "_id": id, "user_id": user, "name": format!("{} {}", kinds[i], u), "type": kinds[i],
                "balance": Decimal128::from_str("0").expect("zero"), "is_active": true,
                "created_at": BsonDateTime::from_millis(range_start - 86_400_000),
            };
            // Some pockets open mid-range, one in twenty was later deleted.
            if i > 0 && rng.chance(20) {
                doc.insert(
                    "created_at",
                    BsonDateTime::from_millis(range_start + rng.below(span / 2) as i64),
                );
            }
            if i > 0 && rng.chance(5) {
                doc.insert(
                    "deleted_at",
                    BsonDateTime::from_millis(range_end - rng.below(span / 4) as i64),
                );
            }
            let mut balance = Money::ZERO;
            // A few pockets hold an opening amount that no transaction explains.
            if rng.chance(3) {
                balance = Money::from_f64(100.0).expect("finite");
                doc.insert("balance", balance.to_bson());
            }
            SeedPocket { doc, balance }
        })
        .collect();
    if u % 97 == 13 {
        // An invalid pocket: its balance is not a number.
        pockets.push(SeedPocket {
            doc: doc! { "_id": seeded(0x90C7, opts.seed, u * 8 + 7), "user_id": user, "name": "broken", "type": "system", "balance": "n/a" },
            balance: Money::ZERO,
        });
    }
    let ids: Vec<ObjectId> = pockets
        .iter()
        .map(|p| p.doc.get_object_id("_id").expect("id"))
        .collect();
    let valid = n_pockets;
    let mut steps = Vec::with_capacity(opts.transactions_per_user);
    for t in 0..opts.transactions_per_user as u64 {
        let id = seeded(0x7A7A, opts.seed, u * 1_000_000 + t);
        let roll = rng.below(100);
        let (kind, legacy_kind) = match roll {
            0..=29 => ("income", "INCOME"),
            30..=74 => ("expense", "EXPENSE"),
            75..=89 => ("transfer", "TRANSFER"),
            90..=94 => ("dp", "DEBT_PAYMENT"),
            _ => ("withdraw", "WITHDRAW"),
        };
        let cents = 100 + rng.below(50_000) as i64;
        let amount = Money::new(rust_decimal::Decimal::new(cents, 2));
        let mut date = range_start + rng.below(span) as i64;
        if rng.chance(2) {
            // Edges of a day: the last millisecond and local midnight.
            let day = cal.day_of_millis(date);
            date = if rng.chance(50) {
                cal.day_end(day).timestamp_millis() - 1
            } else {
                cal.day_start(day).timestamp_millis()
            };
        }
        let from = ids[rng.below(valid as u64) as usize];
        let mut to = ids[rng.below(valid as u64) as usize];
        if kind == "transfer" && to == from && !rng.chance(10) {
            to = ids[(rng.below(valid as u64) as usize + 1) % valid];
        }
        let mut doc = doc! {
            "_id": id, "user_id": user,
            "type": if rng.chance(3) { legacy_kind } else { kind },
            "amount": encode_amount(&mut rng, amount),
            "date": BsonDateTime::from_millis(date),
            "note": if rng.chance(30) { Bson::String(format!("note {t}")) } else { Bson::Null },
            "created_at": BsonDateTime::from_millis(date),
        };
        let cat = rng.below(12);
        if kind != "transfer" && cat < 10 {
            doc.insert("category_id", oid(0xCA7E, cat));
        } else if cat == 10 {
            doc.insert("category_id", oid(0xDEAD, cat)); // a category that does not exist
        }
        let legacy = rng.chance(5);
        let (from_key, to_key) = if legacy {
            ("pocket_from", "pocket_to")
        } else {
            ("pocket_from_id", "pocket_to_id")
        };
        let mut effects: Vec<(ObjectId, Money)> = Vec::new();
        match kind {
            "income" => {
                doc.insert(to_key, to);
                effects.push((to, amount));
            }
            "transfer" => {
                doc.insert(from_key, from);
                doc.insert(to_key, to);
                effects.push((from, -amount));
                effects.push((to, amount));
            }
            _ => {
                doc.insert(from_key, from);
                effects.push((from, -amount));
            }
        }
        // Invalid documents: they move no balance.
        if rng.chance(1) {
            match rng.below(5) {
                0 => doc.remove("user_id"),
                1 => doc.insert("amount", "abc"),
                2 => doc.insert("amount", -5),
                3 => doc.insert("date", "2026-01-01"),
                _ => doc.insert("type", "refund"),
            };
            summary.invalid += 1;
            steps.push((doc, Vec::new()));
            continue;
        }
        // Soft-deleted: the API reverses the balance, so the net is nothing.
        if rng.chance(3) {
            doc.insert("deleted_at", BsonDateTime::from_millis(date + 1000));
            summary.soft_deleted += 1;
            steps.push((doc, Vec::new()));
            continue;
        }
        summary.transactions += 1;
        let mut updates = Vec::new();
        for (pocket, delta) in effects {
            let p = pockets
                .iter_mut()
                .find(|p| p.doc.get_object_id("_id").ok() == Some(pocket))
                .expect("own pocket");
            p.balance += delta;
            updates.push((pocket, p.balance));
        }
        steps.push((doc, updates));
    }
    UserData { pockets, steps }
}

fn encode_amount(rng: &mut Rng, amount: Money) -> Bson {
    match rng.below(100) {
        0..=59 => amount.to_bson(),
        60..=84 => Bson::Double(amount.to_string().parse().expect("decimal")),
        85..=89 if amount.decimal().fract().is_zero() => {
            Bson::Int32(amount.to_string().parse().expect("int"))
        }
        90..=94 => Bson::String(format!(" {amount} ")),
        _ => amount.to_bson(),
    }
}

fn balance_doc(doc: &Document, balance: Money) -> Document {
    let mut d = doc.clone();
    if !matches!(d.get("balance"), Some(Bson::String(_))) {
        d.insert("balance", balance.to_bson());
    }
    d
}

async fn write_bulk(db: &Database, users: Vec<UserData>) -> Result<()> {
    let mut pockets = Vec::new();
    let mut txs = Vec::new();
    for u in users {
        // The last update of each pocket is its final balance.
        let finals: HashMap<ObjectId, Money> = u
            .steps
            .iter()
            .flat_map(|(_, ups)| ups.iter().copied())
            .collect();
        for p in &u.pockets {
            let id = p.doc.get_object_id("_id").expect("id");
            pockets.push(balance_doc(
                &p.doc,
                finals.get(&id).copied().unwrap_or(p.balance),
            ));
        }
        txs.extend(u.steps.into_iter().map(|(d, _)| d));
    }
    db.collection::<Document>(POCKETS)
        .insert_many(pockets)
        .await
        .context("writing pockets")?;
    for chunk in txs.chunks(5000) {
        db.collection::<Document>(TRANSACTIONS)
            .insert_many(chunk.to_vec())
            .await
            .context("writing transactions")?;
    }
    Ok(())
}

async fn write_like_the_api(db: &Database, users: Vec<UserData>) -> Result<()> {
    let lanes = 8;
    let mut buckets: Vec<Vec<UserData>> = (0..lanes).map(|_| Vec::new()).collect();
    for (i, u) in users.into_iter().enumerate() {
        buckets[i % lanes].push(u);
    }
    let tasks = buckets.into_iter().map(|bucket| {
        let db = db.clone();
        async move {
            let pockets = db.collection::<Document>(POCKETS);
            let txs = db.collection::<Document>(TRANSACTIONS);
            for u in bucket {
                for p in &u.pockets {
                    pockets
                        .insert_one(&p.doc)
                        .await
                        .context("writing a pocket")?;
                }
                for (tx, updates) in u.steps {
                    txs.insert_one(tx).await.context("writing a transaction")?;
                    for (pocket, balance) in updates {
                        pockets
                            .update_one(
                                doc! { "_id": pocket },
                                doc! { "$set": { "balance": balance.to_bson() } },
                            )
                            .await
                            .context("updating a pocket balance")?;
                    }
                }
            }
            Ok::<_, crate::error::Error>(())
        }
    });
    try_join_all(tasks).await?;
    Ok(())
}

/// Keeps writing transactions dated now for the existing users, the way the
/// API does (transaction, then the pocket balance), at `per_second`, until
/// `stop` completes. Returns how many it wrote.
pub async fn trickle(
    db: &Database,
    per_second: f64,
    seed: u64,
    now: impl Fn() -> chrono::DateTime<chrono::Utc>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<u64> {
    use futures::TryStreamExt;
    let pockets = db.collection::<Document>(POCKETS);
    let mut owned: Vec<(ObjectId, ObjectId, Money)> = Vec::new();
    let mut cursor = pockets
        .find(doc! { "deleted_at": Bson::Null })
        .await
        .context("reading pockets")?;
    while let Some(d) = cursor.try_next().await.context("reading pockets")? {
        if let Ok(p) = crate::core::source::decode_pocket(&d) {
            if let (Some(user), Ok(balance)) = (p.user_id, p.balance) {
                owned.push((user, p.id, balance));
            }
        }
    }
    if owned.is_empty() {
        crate::bail!("no pockets to write to: seed some users first");
    }
    let mut rng = Rng::new(seed ^ 0x7121_C41E);
    let period = std::time::Duration::from_secs_f64(1.0 / per_second);
    let mut ticker = tokio::time::interval(period);
    tokio::pin!(stop);
    let txs = db.collection::<Document>(TRANSACTIONS);
    let mut written = 0u64;
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(written),
            _ = ticker.tick() => {}
        }
        let i = rng.below(owned.len() as u64) as usize;
        let (user, pocket, balance) = owned[i];
        let amount = Money::new(rust_decimal::Decimal::new(
            100 + rng.below(20_000) as i64,
            2,
        ));
        let income = rng.chance(40);
        let mut tx = doc! {
            "_id": ObjectId::new(), "user_id": user,
            "type": if income { "income" } else { "expense" },
            "amount": amount.to_bson(),
            "date": BsonDateTime::from_millis(now().timestamp_millis()),
            "category_id": oid(0xCA7E, rng.below(10)),
        };
        tx.insert(
            if income {
                "pocket_to_id"
            } else {
                "pocket_from_id"
            },
            pocket,
        );
        txs.insert_one(tx).await.context("writing a transaction")?;
        let new_balance = if income {
            balance + amount
        } else {
            balance - amount
        };
        pockets
            .update_one(
                doc! { "_id": pocket },
                doc! { "$set": { "balance": new_balance.to_bson() } },
            )
            .await
            .context("updating a pocket balance")?;
        owned[i].2 = new_balance;
        written += 1;
    }
}
