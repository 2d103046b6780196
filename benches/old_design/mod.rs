//! The three nightly cron jobs tally replaces, re-created **for comparison
//! only: this is not part of tally** and computes nothing tally's contract
//! asks for. Each job walks the users (one `distinct` for the list, then
//! batches of 100, sequentially) and, per user, makes one query and one
//! write, each its own round trip, in its own collections (`baseline_*`,
//! unique keys like tally's). Writes are plain inserts, the cheapest write
//! on this server, so the baseline is not handicapped.

use anyhow::Result;
use bson::oid::ObjectId;
use bson::{doc, Bson, Document};
use chrono::NaiveDate;
use futures::TryStreamExt;
use mongodb::{Database, IndexModel};
use tally::core::calendar::{date_label, first_of_month, last_of_month, next_day, Calendar};
use tally::core::money::Money;
use tally::core::source::decode_transaction;

pub const BATCH: usize = 100;
const REPORTS: &str = "baseline_daily_reports";
const SNAPSHOTS: &str = "baseline_daily_snapshots";
const MONTHLY: &str = "baseline_monthly_summaries";

pub async fn prepare(db: &Database) -> Result<()> {
    for (coll, field) in [
        (REPORTS, "report_date"),
        (SNAPSHOTS, "snapshot_date"),
        (MONTHLY, "month"),
    ] {
        let c = db.collection::<Document>(coll);
        c.drop().await.ok();
        let unique = mongodb::options::IndexOptions::builder()
            .unique(true)
            .build();
        c.create_index(
            IndexModel::builder()
                .keys(doc! { "user_id": 1, field: 1 })
                .options(unique)
                .build(),
        )
        .await?;
    }
    Ok(())
}

/// Every user with a pocket, in id order.
pub async fn users(db: &Database) -> Result<Vec<ObjectId>> {
    let mut ids: Vec<ObjectId> = db
        .collection::<Document>("pockets")
        .distinct("user_id", doc! {})
        .await?
        .into_iter()
        .filter_map(|b| b.as_object_id())
        .collect();
    ids.sort_by_key(|id| id.bytes());
    Ok(ids)
}

async fn find(db: &Database, coll: &str, filter: Document) -> Result<Vec<Document>> {
    Ok(db
        .collection::<Document>(coll)
        .find(filter)
        .await?
        .try_collect()
        .await?)
}

/// Count, income and expense of the live transactions among `docs`.
fn totals(docs: &[Document]) -> (i64, Money, Money, Vec<Bson>) {
    let (mut n, mut income, mut expense, mut ids) = (0, Money::ZERO, Money::ZERO, Vec::new());
    for t in docs
        .iter()
        .filter_map(|d| decode_transaction(d).ok())
        .filter(|t| t.is_live())
    {
        n += 1;
        ids.push(t.id.to_bson());
        match t.kind {
            tally::core::source::TxType::Income => income += t.amount,
            k if k.is_outflow() => expense += t.amount,
            _ => {}
        }
    }
    (n, income, expense, ids)
}

fn window(cal: &Calendar, from: NaiveDate, to_excl: NaiveDate) -> Document {
    let ms = |d: NaiveDate| bson::DateTime::from_millis(cal.day_start(d).timestamp_millis());
    doc! { "$gte": ms(from), "$lt": ms(to_excl) }
}

/// 23:59: per user, the day's transactions, then a report.
pub async fn daily_reports(
    db: &Database,
    cal: &Calendar,
    day: NaiveDate,
    users: &[ObjectId],
) -> Result<u64> {
    let out = db.collection::<Document>(REPORTS);
    let mut written = 0;
    for batch in users.chunks(BATCH) {
        for user in batch {
            let docs = find(
                db,
                "transactions",
                doc! { "user_id": user, "date": window(cal, day, next_day(day)) },
            )
            .await?;
            let (n, income, expense, ids) = totals(&docs);
            out.insert_one(doc! {
                "user_id": user, "report_date": date_label(day), "transaction_count": n,
                "total_income": income.to_bson(), "total_expense": expense.to_bson(),
                "transactions": ids, "generated_at": bson::DateTime::now(),
            })
            .await?;
            written += 1;
        }
    }
    Ok(written)
}

/// 00:00: per user, the pockets, then a snapshot of today's balances.
pub async fn snapshots(db: &Database, day: NaiveDate, users: &[ObjectId]) -> Result<u64> {
    let out = db.collection::<Document>(SNAPSHOTS);
    let mut written = 0;
    for batch in users.chunks(BATCH) {
        for user in batch {
            let pockets = find(db, "pockets", doc! { "user_id": user }).await?;
            let mut total = Money::ZERO;
            let balances: Vec<Bson> = pockets
                .iter()
                .filter_map(|d| tally::core::source::decode_pocket(d).ok())
                .filter_map(|p| {
                    let b = p.balance.ok()?;
                    total += b;
                    Some(Bson::Document(
                        doc! { "pocket_id": p.id, "pocket_name": p.name, "balance": b.to_bson() },
                    ))
                })
                .collect();
            out.insert_one(doc! {
                "user_id": user, "snapshot_date": date_label(day), "pocket_balances": balances,
                "total_balance": total.to_bson(), "generated_at": bson::DateTime::now(),
            })
            .await?;
            written += 1;
        }
    }
    Ok(written)
}

/// 00:01 on the 1st: per user, the month's transactions, then a summary.
pub async fn monthly(
    db: &Database,
    cal: &Calendar,
    day: NaiveDate,
    users: &[ObjectId],
) -> Result<u64> {
    let out = db.collection::<Document>(MONTHLY);
    let (first, last) = (first_of_month(day), last_of_month(day));
    let mut written = 0;
    for batch in users.chunks(BATCH) {
        for user in batch {
            let docs = find(
                db,
                "transactions",
                doc! { "user_id": user, "date": window(cal, first, next_day(last)) },
            )
            .await?;
            let (n, income, expense, _) = totals(&docs);
            out.insert_one(doc! {
                "user_id": user, "month": date_label(first), "transaction_count": n,
                "income": income.to_bson(), "expense": expense.to_bson(),
                "net": (income - expense).to_bson(), "generated_at": bson::DateTime::now(),
            })
            .await?;
            written += 1;
        }
    }
    Ok(written)
}
