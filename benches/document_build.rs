//! What one written document costs to build and drop as a
//! `bson::Document` (how tally builds reports today) against one byte
//! buffer written in place (issue 13, target 3; BENCHMARKS.md (3), fifth
//! update). Not tally's builders: a document of the monthly summary's
//! shape (contract §5.4: its fields, 10 expense categories, 2 income
//! categories, 3 pockets) with the bookkeeping `write_over` adds, built
//! three ways:
//! - `Document`, field by field, as `UserView::monthly` and `write_over` do
//!   (an `IndexMap` grown field by field, a `String` per key, a `Document`
//!   per list entry), and the same encoded to `RawDocumentBuf` as
//!   `bulk::prepare` does before sending;
//! - `RawDocumentBuf::append` (bson's raw builder: a buffer per list
//!   entry, copied into its list);
//! - `tally::core::out::RawOut`, the live path's writer: one buffer for
//!   the whole document, each (sub)document's length written when it ends.
//!
//! All three must encode the same bytes (asserted). Printed: nanoseconds
//! per document (build and drop) and the ratios, in three rounds; wall
//! time, one thread. Run: `cargo bench --bench document_build`. Under
//! `cargo test` it runs a few hundred documents as a smoke test.

use std::hint::black_box;
use std::time::Instant;

use bson::oid::ObjectId;
use bson::raw::{RawArrayBuf, RawDocumentBuf};
use bson::{doc, Bson, DateTime, Decimal128, Document};
use tally::core::out::{Out, RawOut};

const CATEGORIES: usize = 10;
const POCKETS: usize = 3;
const FLOWS: [(&str, u64); 5] = [
    ("income", 1),
    ("expense", 2),
    ("transfer_in", 3),
    ("transfer_out", 4),
    ("net", 5),
];

/// A Decimal128 per `i`: the values do not matter, only their 16 bytes.
fn dec(i: u64) -> Decimal128 {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(i * 1234).to_le_bytes());
    b[14] = 0x3c;
    b[15] = 0x30;
    Decimal128::from_bytes(b)
}

fn now() -> DateTime {
    DateTime::from_millis(1_790_000_000_000)
}

fn as_document(user: ObjectId, ids: &[ObjectId]) -> Document {
    let category = |i: usize| {
        Bson::Document(doc! {
            "category_id": ids[i],
            "category_name": format!("Category {i}"),
            "amount": dec(i as u64),
            "percent_of_total": 10.0 + i as f64,
            "transaction_count": i as i64,
        })
    };
    let pockets: Vec<Bson> = (0..POCKETS)
        .map(|i| {
            let mut p = doc! {
                "pocket_id": ids[i],
                "pocket_name": format!("Pocket {i}"),
                "pocket_type": "bank",
            };
            for (k, v) in FLOWS {
                p.insert(k, dec(v));
            }
            Bson::Document(p)
        })
        .collect();
    let mut d = doc! { "user_id": user, "month": "2026-07-01" };
    for (k, v) in FLOWS {
        d.insert(k, dec(v));
    }
    d.insert("opening_balance", dec(6));
    d.insert("closing_balance", dec(7));
    d.insert(
        "expense_by_category",
        (0..CATEGORIES).map(category).collect::<Vec<_>>(),
    );
    d.insert(
        "income_by_category",
        (0..2).map(category).collect::<Vec<_>>(),
    );
    d.insert("by_pocket", pockets);
    d.insert("ytd_income", dec(8));
    d.insert("ytd_expense", dec(9));
    d.insert("ytd_net", dec(10));
    d.insert("day_count", 20_i64);
    d.insert("transaction_count", 30_i64);
    d.insert("is_complete", false);
    // What `write_over` adds.
    d.insert("_id", ids[0]);
    d.insert("time_zone", "America/New_York");
    d.insert("revision", 3_i64);
    d.insert("restatements", 0_i64);
    d.insert("generated_at", now());
    d.insert("updated_at", now());
    d.insert("created_at", now());
    d
}

fn as_appended(user: ObjectId, ids: &[ObjectId]) -> RawDocumentBuf {
    let category = |i: usize| {
        let mut c = RawDocumentBuf::new();
        c.append("category_id", ids[i]);
        c.append("category_name", format!("Category {i}").as_str());
        c.append("amount", dec(i as u64));
        c.append("percent_of_total", 10.0 + i as f64);
        c.append("transaction_count", i as i64);
        c
    };
    let list = |n: usize| {
        let mut a = RawArrayBuf::new();
        for i in 0..n {
            a.push(category(i));
        }
        a
    };
    let mut pockets = RawArrayBuf::new();
    for (i, id) in ids.iter().enumerate().take(POCKETS) {
        let mut p = RawDocumentBuf::new();
        p.append("pocket_id", *id);
        p.append("pocket_name", format!("Pocket {i}").as_str());
        p.append("pocket_type", "bank");
        for (k, v) in FLOWS {
            p.append(k, dec(v));
        }
        pockets.push(p);
    }
    let mut d = RawDocumentBuf::new();
    d.append("user_id", user);
    d.append("month", "2026-07-01");
    for (k, v) in FLOWS {
        d.append(k, dec(v));
    }
    d.append("opening_balance", dec(6));
    d.append("closing_balance", dec(7));
    d.append("expense_by_category", list(CATEGORIES));
    d.append("income_by_category", list(2));
    d.append("by_pocket", pockets);
    d.append("ytd_income", dec(8));
    d.append("ytd_expense", dec(9));
    d.append("ytd_net", dec(10));
    d.append("day_count", 20_i64);
    d.append("transaction_count", 30_i64);
    d.append("is_complete", false);
    d.append("_id", ids[0]);
    d.append("time_zone", "America/New_York");
    d.append("revision", 3_i64);
    d.append("restatements", 0_i64);
    d.append("generated_at", now());
    d.append("updated_at", now());
    d.append("created_at", now());
    d
}

/// Through tally's own one-buffer writer, as the live path builds.
fn as_written(user: ObjectId, ids: &[ObjectId]) -> RawDocumentBuf {
    let category = |w: &mut RawOut, i: usize| {
        w.begin_entry();
        w.oid("category_id", ids[i]);
        w.string("category_name", &format!("Category {i}"));
        w.decimal("amount", dec(i as u64));
        w.double("percent_of_total", 10.0 + i as f64);
        w.int64("transaction_count", i as i64);
        w.end();
    };
    let mut w = RawOut::new();
    w.oid("user_id", user);
    w.string("month", "2026-07-01");
    for (k, v) in FLOWS {
        w.decimal(k, dec(v));
    }
    w.decimal("opening_balance", dec(6));
    w.decimal("closing_balance", dec(7));
    for (list, n) in [
        ("expense_by_category", CATEGORIES),
        ("income_by_category", 2),
    ] {
        w.begin_array(list);
        for i in 0..n {
            category(&mut w, i);
        }
        w.end();
    }
    w.begin_array("by_pocket");
    for (i, id) in ids.iter().enumerate().take(POCKETS) {
        w.begin_entry();
        w.oid("pocket_id", *id);
        w.string("pocket_name", &format!("Pocket {i}"));
        w.string("pocket_type", "bank");
        for (k, v) in FLOWS {
            w.decimal(k, dec(v));
        }
        w.end();
    }
    w.end();
    w.decimal("ytd_income", dec(8));
    w.decimal("ytd_expense", dec(9));
    w.decimal("ytd_net", dec(10));
    w.int64("day_count", 20);
    w.int64("transaction_count", 30);
    w.boolean("is_complete", false);
    w.oid("_id", ids[0]);
    w.string("time_zone", "America/New_York");
    w.int64("revision", 3);
    w.int64("restatements", 0);
    w.datetime("generated_at", now());
    w.datetime("updated_at", now());
    w.datetime("created_at", now());
    w.finish()
}

/// Mean nanoseconds per call of `f` over `n` calls, printed.
fn time<T>(label: &str, n: u32, mut f: impl FnMut() -> T) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        black_box(f());
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(n);
    println!("  {label:<58} {ns:>8.0} ns");
    ns
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let user = ObjectId::new();
    let ids: Vec<ObjectId> = (0..CATEGORIES).map(|_| ObjectId::new()).collect();
    let encoded = RawDocumentBuf::from_document(&as_document(user, &ids)).expect("encodes");
    assert_eq!(encoded.as_bytes(), as_appended(user, &ids).as_bytes());
    assert_eq!(encoded.as_bytes(), as_written(user, &ids).as_bytes());
    println!(
        "a monthly summary's shape, {} bytes: {CATEGORIES} + 2 categories, {POCKETS} pockets, bookkeeping",
        encoded.as_bytes().len()
    );
    let (n, rounds) = if benching { (200_000, 3) } else { (300, 1) };
    for round in 1..=rounds {
        println!("round {round} of {rounds}, {n} documents each, build and drop:");
        let document = time("bson::Document", n, || as_document(user, &ids));
        let sent = time(
            "bson::Document, then encoded as bulk::prepare does",
            n,
            || RawDocumentBuf::from_document(&as_document(user, &ids)).expect("encodes"),
        );
        let appended = time("RawDocumentBuf::append", n, || as_appended(user, &ids));
        let written = time("one buffer (RawOut)", n, || as_written(user, &ids));
        println!(
            "  Document / one buffer: {:.1}x; with the encode: {:.1}x; RawDocumentBuf::append / one buffer: {:.1}x",
            document / written,
            sent / written,
            appended / written
        );
    }
}
