//! Golden test: a tiny, hand-checked dataset whose expected output documents
//! are committed under `tests/fixtures/golden/` (MongoDB canonical extended
//! JSON, bookkeeping fields omitted).
//!
//! The dataset is built below in [`dataset`]; `backfill` runs over
//! 2026-01-30 ..= 2026-02-02 in `America/New_York` with a fixed `now`, and
//! every stored document of the three output collections must equal a
//! fixture (`tally::core::diff::diff`: money compared numerically, bookkeeping
//! ignored), with no document missing or surplus.
//!
//! Debugging aid: `TALLY_GOLDEN_DUMP=1 cargo test --test golden -- --nocapture`
//! prints what tally stored, as canonical extended JSON. Never paste that
//! output into the fixtures unchecked: every fixture number comes from the
//! derivation at the end of this comment, done by hand from
//! `docs/data-contract.md`.
//!
//! # Choice of `now`
//! `now` = 2026-02-10T12:00:00Z = 07:00 local on 2026-02-10, so "today" is
//! 2026-02-10: every day of the range is closed (reports `is_final: true`,
//! snapshots written for all four days), January is a closed month
//! (`is_complete: true`, and Carol gets one with no transaction), February
//! is still open (`is_complete: false`, no document for Carol), and T19
//! (2026-02-20) and T20 (2026-03-05) are dated after `now`.
//!
//! # Dataset
//! Time zone America/New_York is UTC−5 over the whole dataset (DST starts
//! 2026-03-08), so local midnight = 05:00Z.
//!
//! Users: Alice `a…01`, Bob `a…02`, Carol `a…03`.
//!
//! Pockets (B = stored balance now):
//! | id   | user  | name     | type       | B                   | created_at (local)   | deleted_at (local)   |
//! |------|-------|----------|------------|---------------------|----------------------|----------------------|
//! | P1   | Alice | Main     | main       | Decimal128 1500.00  | 2025-06-01           | —                    |
//! | P2   | Alice | Savings  | saving     | double 305.7        | 2026-01-31 15:00     | —                    |
//! | P3   | Alice | Wallet   | allocation | int64 0             | 2025-01-01           | 2026-02-01 12:00     |
//! | P4   | Bob   | Bob Main | main       | string "150.25"     | 2025-03-01           | —                    |
//! | P5   | Carol | (absent) | system     | int32 40            | (absent: always)     | —                    |
//! | P6   | Carol | Later    | saving     | int32 10            | 2026-02-05           | —                    |
//! | P7   | Alice | Broken   | allocation | string "12,5" (INVALID → tally_rejects) | (absent) | —          |
//!
//! Categories: C1 Food, C2 Salary, C3 Rent (soft-deleted: still "Rent"),
//! C9 referenced but missing ("Unknown"); no category → "Uncategorized".
//!
//! Transactions (local times; all owned by Alice unless noted):
//! | tx  | local date/time         | type (raw)     | amount (BSON)        | pockets                                   | cat | note / remark |
//! |-----|-------------------------|----------------|----------------------|-------------------------------------------|-----|---------------|
//! | T01 | 2025-12-31 23:30        | income         | int32 500            | to P1                                     | C2  | 2026-01-01T04:30Z: last year locally, outside YTD |
//! | T02 | 2026-01-10 09:00        | income         | Decimal128 "2000.00" | to P1                                     | C2  | "January pay" |
//! | T03 | 2026-01-30 08:15        | expense        | double 0.1           | from P1                                   | C1  | "gum" |
//! | T04 | 2026-01-30 08:15        | expense        | double 0.2           | from P1                                   | C1  | note 42 (not a string → null); same time as T03, id breaks the tie |
//! | T05 | 2026-01-30 09:00        | withdraw       | string " 15.50 "     | from P3                                   | —   | |
//! | T06 | 2026-01-30 10:00        | expense        | string "abc"         | from P1                                   | C1  | INVALID → tally_rejects, counts nowhere |
//! | T07 | 2026-01-30 18:00        | DEBT_PAYMENT   | int32 120            | legacy `pocket_from` P1                   | C3  | |
//! | T08 | 2026-01-30 23:59:59.999 | expense        | double 15.5          | from P3                                   | C9  | = 2026-01-31T04:59:59.999Z, still Jan 30 |
//! | T09 | 2026-01-31 16:00        | transfer       | Decimal128 "300"     | P1 → P2                                   | null| |
//! | T10 | 2026-01-31 10:00        | TRANSFER       | int64 25             | P3 → P3 (self-transfer)                   | —   | |
//! | T11 | 2026-01-31 11:00        | expense        | double 9.99          | from P1                                   | C1  | soft-deleted → counts nowhere |
//! | T12 | 2026-01-31 12:00 (Bob)  | INCOME         | int32 100            | to P4                                     | C2  | |
//! | T13 | 2026-02-01 00:00:00.000 | expense        | Decimal128 "12.50"   | from P1                                   | C1  | = 05:00Z, first instant of Feb 1 |
//! | T14 | 2026-02-01 09:00        | transfer       | double 50.0          | P1 → P4 (Bob's pocket!)                   | —   | |
//! | T15 | 2026-02-01 11:00        | transfer       | string "60"          | P3 → legacy `pocket_to` P1                | —   | P3 is deleted at 12:00 the same day |
//! | T16 | 2026-02-01 13:00 (Bob)  | expense        | Decimal128 "79.90"   | from P4                                   | —   | |
//! | T17 | 2026-02-02 08:00        | income         | double 0.7           | to P2, stale `pocket_from_id` P1 (ignored)| —   | "interest" |
//! | T18 | 2026-02-02 09:00        | transfer       | int32 5              | `pocket_from_id: null` + legacy `pocket_from` P1 (→ no from), to P2 | — | |
//! | T19 | 2026-02-20 10:00        | expense        | int32 100            | from P1                                   | C1  | after `now` (future-dated) |
//! | T20 | 2026-03-05 10:00 (Bob)  | expense        | double 10            | from P4                                   | —   | after `now`, after February |
//! | T21 | 2026-02-02 19:00 (Bob)  | expense        | double 0.1           | from P4                                   | C1  | = 2026-02-03T00:00Z, still Feb 2 locally |
//! | T22 | 2026-02-02 10:00        | expense        | int32 3              | from P7 (invalid pocket of Alice)         | C1  | `_id` is the string "legacy-22" |
//!
//! # Derivation (contract §1.2, §4, §5)
//! net(p, d) per pocket and day (live, valid transactions of the owner only):
//! - P1: 01-10 +2000 (T02); 01-30 −0.1 −0.2 −120 = −120.3 (T03,T04,T07);
//!   01-31 −300 (T09); 02-01 −12.5 −50 +60 = −2.5 (T13,T14,T15); 02-20 −100 (T19).
//!   (T17's stale from and T18's null from do not touch P1.)
//! - P2: 01-31 +300 (T09); 02-02 +0.7 +5 = +5.7 (T17,T18).
//! - P3: 01-30 −15.5 −15.5 = −31 (T05,T08); 01-31 +25 −25 = 0 (T10); 02-01 −60 (T15).
//! - P4 (Bob): 01-31 +100 (T12); 02-01 −79.9 (T16); 02-02 −0.1 (T21); 03-05 −10 (T20).
//!   T14's +50 is Alice's transaction: it counts on no balance.
//!
//! closing(p, D) = B − Σ net after D:
//! - P1: ≥02-20: 1500; 02-02: 1500+100 = 1600; 02-01: 1600; 01-31: 1600+2.5 = 1602.5;
//!   01-30: 1602.5+300 = 1902.5; 01-10..01-29: 1902.5+120.3 = 2022.8; 01-09 and before: 22.8.
//! - P2: 02-02: 305.7; 02-01, 01-31: 305.7−5.7 = 300; 01-30: 0.
//! - P3: 02-01 and later: 0; 01-31, 01-30: 60; 01-29 and before: 60+31 = 91.
//! - P4: ≥03-05: 150.25; 02-02..03-04: 160.25; 02-01: 160.35; 01-31: 240.25; ≤01-30: 140.25.
//! - P5: 40 always. P6: counts only from 02-05 (never in the periods below).
//! - P7 is invalid: it never counts and has no balance; T22's −3 shows only in the breakdowns.
//!
//! Counting pockets (contract §1.3): Alice 01-01..01-30: P1, P3; 01-31: P1, P2, P3;
//! 02-01 onwards: P1, P2 (P3 deleted 02-01 17:00Z < day end 02-02 05:00Z).
//! Bob: P4 always. Carol: P5 (P6 from 02-05).
//!
//! Daily reports (is_final: all days < today 02-10):
//! - R1 Alice 01-30: 5 live tx (T03,T04,T05,T07,T08; T06 invalid).
//!   expense 0.1+0.2+15.5+120+15.5 = 151.3. closing = P1 1902.5 + P3 60 = 1962.5;
//!   opening = P1 2022.8 + P3 91 = 2113.8; net_change −151.3.
//!   expense_by_category by amount desc, id asc, null last: Rent 120; C9 "Unknown" 15.5;
//!   null "Uncategorized" 15.5 (tie with C9: null last); Food 0.1+0.2 = 0.3 (2 tx).
//!   Pockets: P1 expense 120.3, open 2022.8, close 1902.5, tx [T03, T04 (same ms, id order), T07];
//!   P3 expense 31, open 91, close 60, tx [T05, T08]. T07 is listed as type "dp".
//! - R2 Alice 01-31: T09, T10 (T11 deleted) → count 2; transfer_in = 300+25 = 325,
//!   transfer_out = 325. closing = 1602.5+300+60 = 1962.5; opening = 1902.5+0+60 = 1962.5; net 0.
//!   P1 out 300 (1902.5 → 1602.5); P2 in 300 (0 → 300); P3 in 25 out 25, count 1 (60 → 60).
//! - R3 Alice 02-01: T13, T14, T15 → count 3; expense 12.5; transfer_in 50+60 = 110; out 110.
//!   closing = P1 1600 + P2 300 = 1900; opening = P1 1602.5 + P2 300 = 1902.5; net −2.5.
//!   (≠ closing of 01-31 = 1962.5: P3 stopped counting.) Pockets: P1 expense 12.5, in 60, out 50,
//!   1602.5 → 1600, tx [T13,T14,T15]; P3 out 60, balances null (deleted that day), labels kept;
//!   P4 in 50, "Unknown", "", balances null (Bob's pocket).
//! - R4 Alice 02-02: T17, T18, T22 → count 3; income 0.7 (Uncategorized), expense 3 (Food),
//!   transfer_in 5, transfer_out 0. closing = 1600 + 305.7 = 1905.7; opening = 1600 + 300 = 1900;
//!   net 5.7 (P7 does not count, so T22 moves no user balance). Pockets: P2 income 0.7, in 5,
//!   300 → 305.7, count 2; P7 "Broken"/"allocation" expense 3, balances null, tx [T22 "legacy-22"].
//!   (P1 is not named: T17's from is stale, T18's from is a present null.)
//! - R5 Bob 01-31: T12 income 100 (Salary); 140.25 → 240.25.
//! - R6 Bob 02-01: T16 expense 79.9 (Uncategorized); 240.25 → 160.35.
//! - R7 Bob 02-02: T21 expense 0.1 (Food); 160.35 → 160.25.
//! - No report for Bob 01-30, Carol (no transactions), nor 01-10/02-20/03-05 (outside range).
//!
//! Snapshots, 01-30..02-02 for every user with a counting pocket (is_complete):
//! - Alice: 01-30 [P1 1902.5 Δ−120.3, P3 60 Δ−31] = 1962.5; 01-31 [P1 1602.5 Δ−300,
//!   P2 300 Δ300, P3 60 Δ0] = 1962.5; 02-01 [P1 1600 Δ−2.5, P2 300 Δ0] = 1900;
//!   02-02 [P1 1600 Δ0, P2 305.7 Δ5.7] = 1905.7. Totals as R1–R4.
//!   YTD (from 2026-01-01 local; T01 is 2025 locally): 01-30 income 2000, expense 151.3,
//!   net 1848.7; 01-31 same; 02-01 expense 151.3+12.5 = 163.8, net 1836.2;
//!   02-02 (expense 3, count 3) income 2000.7, expense 163.8+3 = 166.8, net 2000.7−166.8 = 1833.9.
//! - Bob: 01-30 140.25 (all zero, count 0, YTD 0); 01-31 240.25 Δ100, YTD 100/0/100;
//!   02-01 160.35 Δ−79.9, YTD 100/79.9/20.1; 02-02 160.25 Δ−0.1, YTD 100/80/20.
//! - Carol: every day [P5 40 Δ0] = 40, pocket_name null; P6 not yet created.
//!
//! Monthly summaries (January closed; February open, computed over all its days):
//! - M1 Alice Jan: T02 + R1 + R2 → income 2000, expense 151.3, net 1848.7, transfer in/out 325.
//!   opening = opening(01-01) = P1 22.8 + P3 91 = 113.8; closing = closing(01-31) = 1962.5.
//!   % of 151.3 (half-even, 2 dp): 120 → 79.3126… = 79.31; 15.5 → 10.2445… = 10.24 (both);
//!   0.3 → 0.1982… = 0.20. Income: Salary 2000 = 100%.
//!   by_pocket: P1 2000 − 120.3 − 300 = 1579.7; P2 +300; P3 −31 + 25 − 25 = −31.
//!   day_count 3 (01-10, 01-30, 01-31), transaction_count 1+5+2 = 8; YTD = the month's.
//! - M2 Alice Feb: R3 + R4 + T19 → income 0.7, expense 12.5+3+100 = 115.5 (Food, 3 tx, 100%),
//!   transfer_in 110+5 = 115, transfer_out 110, net 0.7−115.5 = −114.8.
//!   opening = opening(02-01) = 1902.5; closing = closing(02-28) = P1 1500 + P2 305.7 = 1805.7.
//!   by_pocket: P1 −112.5+60−50 = −102.5; P2 0.7+5 = 5.7; P3 −60; P4 ("Unknown") +50; P7 −3.
//!   YTD: income 2000.7, expense 151.3+115.5 = 266.8, net 1733.9. day_count 3 (02-01, 02-02,
//!   02-20), transaction_count 3+3+1 = 7, is_complete false.
//! - M3 Bob Jan: income 100 (Salary 100%), opening 140.25, closing 240.25, by_pocket P4 +100.
//! - M4 Bob Feb: expense 79.9+0.1 = 80, net −80, opening 240.25, closing(02-28) 160.25
//!   (T20 is in March). % of 80: 79.9 → 99.875 → half-even 99.88; 0.1 → 0.125 → 0.12.
//!   YTD 100/80/20; day_count 2, transaction_count 2, is_complete false.
//! - M5 Carol Jan: closed month, P5 counts on 01-31 → all zeros, opening = closing = 40.
//!   No Carol Feb: month open and no transaction.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::str::FromStr;

use bson::oid::ObjectId;
use bson::{doc, Bson, DateTime as BsonDateTime, Decimal128, Document};
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use mongodb::{Client, Database};

use tally::batch::backfill::backfill;
use tally::batch::scan::Range;
use tally::core::calendar::{label_date, last_of_month, Calendar};
use tally::core::diff::diff;
use tally::core::reports::{Kind, BOOKKEEPING};
use tally::core::source::RejectReason;

const TIME_ZONE: &str = "America/New_York";
const NOW: &str = "2026-02-10T12:00:00Z";
const FROM: &str = "2026-01-30";
const TO: &str = "2026-02-02";

const ALICE: &str = "a00000000000000000000001";
const BOB: &str = "a00000000000000000000002";
const CAROL: &str = "a00000000000000000000003";
const P1: &str = "b00000000000000000000001";
const P2: &str = "b00000000000000000000002";
const P3: &str = "b00000000000000000000003";
const P4: &str = "b00000000000000000000004";
const P5: &str = "b00000000000000000000005";
const P6: &str = "b00000000000000000000006";
const P7: &str = "b00000000000000000000007";
const FOOD: &str = "c00000000000000000000001";
const SALARY: &str = "c00000000000000000000002";
const RENT: &str = "c00000000000000000000003";
const MISSING_CATEGORY: &str = "c00000000000000000000009";

fn oid(hex: &str) -> ObjectId {
    ObjectId::parse_str(hex).expect("fixed ObjectId")
}

/// Transaction `n`'s id: `d…` followed by n in two decimal digits.
fn tx_id(n: u32) -> ObjectId {
    oid(&format!("d000000000000000000000{n:02}"))
}

/// A datetime from RFC 3339 text with its offset (local times are `-05:00`).
fn at(rfc3339: &str) -> Bson {
    let t = DateTime::parse_from_rfc3339(rfc3339).expect("RFC 3339 time");
    Bson::DateTime(BsonDateTime::from_millis(t.timestamp_millis()))
}

fn dec(s: &str) -> Bson {
    Bson::Decimal128(Decimal128::from_str(s).expect("decimal"))
}

fn day(s: &str) -> NaiveDate {
    s.parse().expect("date")
}

/// The source collections; see the tables in the module docs.
fn dataset() -> (Vec<Document>, Vec<Document>, Vec<Document>) {
    let (alice, bob, carol) = (oid(ALICE), oid(BOB), oid(CAROL));
    let pockets = vec![
        doc! { "_id": oid(P1), "user_id": alice, "name": "Main", "type": "main", "balance": dec("1500.00"),
        "is_active": true, "created_at": at("2025-06-01T12:00:00-05:00"), "deleted_at": Bson::Null },
        doc! { "_id": oid(P2), "user_id": alice, "name": "Savings", "type": "saving", "balance": 305.7_f64,
        "is_active": true, "created_at": at("2026-01-31T15:00:00-05:00") },
        doc! { "_id": oid(P3), "user_id": alice, "name": "Wallet", "type": "allocation", "balance": 0_i64,
        "is_active": false, "created_at": at("2025-01-01T12:00:00-05:00"),
        "deleted_at": at("2026-02-01T12:00:00-05:00") },
        doc! { "_id": oid(P4), "user_id": bob, "name": "Bob Main", "type": "main", "balance": "150.25",
        "created_at": at("2025-03-01T12:00:00-05:00") },
        doc! { "_id": oid(P5), "user_id": carol, "type": "system", "balance": 40_i32 },
        doc! { "_id": oid(P6), "user_id": carol, "name": "Later", "type": "saving", "balance": 10_i32,
        "created_at": at("2026-02-05T12:00:00-05:00") },
        doc! { "_id": oid(P7), "user_id": alice, "name": "Broken", "type": "allocation", "balance": "12,5" },
    ];
    let categories = vec![
        doc! { "_id": oid(FOOD), "user_id": alice, "name": "Food" },
        doc! { "_id": oid(SALARY), "user_id": alice, "name": "Salary" },
        doc! { "_id": oid(RENT), "user_id": alice, "name": "Rent", "deleted_at": at("2026-01-15T12:00:00-05:00") },
    ];
    let (p1, p2, p3, p4) = (oid(P1), oid(P2), oid(P3), oid(P4));
    let transactions = vec![
        doc! { "_id": tx_id(1), "user_id": alice, "type": "income", "amount": 500_i32, "pocket_to_id": p1,
        "category_id": oid(SALARY), "date": at("2025-12-31T23:30:00-05:00") },
        doc! { "_id": tx_id(2), "user_id": alice, "type": "income", "amount": dec("2000.00"), "pocket_to_id": p1,
        "category_id": oid(SALARY), "note": "January pay", "date": at("2026-01-10T09:00:00-05:00") },
        doc! { "_id": tx_id(3), "user_id": alice, "type": "expense", "amount": 0.1_f64, "pocket_from_id": p1,
        "category_id": oid(FOOD), "note": "gum", "date": at("2026-01-30T08:15:00-05:00") },
        doc! { "_id": tx_id(4), "user_id": alice, "type": "expense", "amount": 0.2_f64, "pocket_from_id": p1,
        "category_id": oid(FOOD), "note": 42_i32, "date": at("2026-01-30T08:15:00-05:00") },
        doc! { "_id": tx_id(5), "user_id": alice, "type": "withdraw", "amount": " 15.50 ", "pocket_from_id": p3,
        "date": at("2026-01-30T09:00:00-05:00") },
        doc! { "_id": tx_id(6), "user_id": alice, "type": "expense", "amount": "abc", "pocket_from_id": p1,
        "category_id": oid(FOOD), "date": at("2026-01-30T10:00:00-05:00") },
        doc! { "_id": tx_id(7), "user_id": alice, "type": "DEBT_PAYMENT", "amount": 120_i32, "pocket_from": p1,
        "category_id": oid(RENT), "date": at("2026-01-30T18:00:00-05:00") },
        doc! { "_id": tx_id(8), "user_id": alice, "type": "expense", "amount": 15.5_f64, "pocket_from_id": p3,
        "category_id": oid(MISSING_CATEGORY), "date": at("2026-01-30T23:59:59.999-05:00") },
        doc! { "_id": tx_id(9), "user_id": alice, "type": "transfer", "amount": dec("300"), "pocket_from_id": p1,
        "pocket_to_id": p2, "category_id": Bson::Null, "date": at("2026-01-31T16:00:00-05:00") },
        doc! { "_id": tx_id(10), "user_id": alice, "type": "TRANSFER", "amount": 25_i64, "pocket_from_id": p3,
        "pocket_to_id": p3, "date": at("2026-01-31T10:00:00-05:00") },
        doc! { "_id": tx_id(11), "user_id": alice, "type": "expense", "amount": 9.99_f64, "pocket_from_id": p1,
        "category_id": oid(FOOD), "date": at("2026-01-31T11:00:00-05:00"),
        "deleted_at": at("2026-02-03T10:00:00-05:00") },
        doc! { "_id": tx_id(12), "user_id": bob, "type": "INCOME", "amount": 100_i32, "pocket_to_id": p4,
        "category_id": oid(SALARY), "date": at("2026-01-31T12:00:00-05:00") },
        doc! { "_id": tx_id(13), "user_id": alice, "type": "expense", "amount": dec("12.50"), "pocket_from_id": p1,
        "category_id": oid(FOOD), "date": at("2026-02-01T00:00:00.000-05:00") },
        doc! { "_id": tx_id(14), "user_id": alice, "type": "transfer", "amount": 50.0_f64, "pocket_from_id": p1,
        "pocket_to_id": p4, "date": at("2026-02-01T09:00:00-05:00") },
        doc! { "_id": tx_id(15), "user_id": alice, "type": "transfer", "amount": "60", "pocket_from_id": p3,
        "pocket_to": p1, "date": at("2026-02-01T11:00:00-05:00") },
        doc! { "_id": tx_id(16), "user_id": bob, "type": "expense", "amount": dec("79.90"), "pocket_from_id": p4,
        "date": at("2026-02-01T13:00:00-05:00") },
        doc! { "_id": tx_id(17), "user_id": alice, "type": "income", "amount": 0.7_f64, "pocket_from_id": p1,
        "pocket_to_id": p2, "note": "interest", "date": at("2026-02-02T08:00:00-05:00") },
        doc! { "_id": tx_id(18), "user_id": alice, "type": "transfer", "amount": 5_i32, "pocket_from_id": Bson::Null,
        "pocket_from": p1, "pocket_to_id": p2, "date": at("2026-02-02T09:00:00-05:00") },
        doc! { "_id": tx_id(19), "user_id": alice, "type": "expense", "amount": 100_i32, "pocket_from_id": p1,
        "category_id": oid(FOOD), "date": at("2026-02-20T10:00:00-05:00") },
        doc! { "_id": tx_id(20), "user_id": bob, "type": "expense", "amount": 10.0_f64, "pocket_from_id": p4,
        "date": at("2026-03-05T10:00:00-05:00") },
        doc! { "_id": tx_id(21), "user_id": bob, "type": "expense", "amount": 0.1_f64, "pocket_from_id": p4,
        "category_id": oid(FOOD), "date": at("2026-02-02T19:00:00-05:00") },
        doc! { "_id": "legacy-22", "user_id": alice, "type": "expense", "amount": 3_i32, "pocket_from_id": oid(P7),
        "category_id": oid(FOOD), "date": at("2026-02-02T10:00:00-05:00") },
    ];
    (transactions, pockets, categories)
}

fn fixture_path(kind: Kind) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(format!("{}.json", kind.collection()))
}

/// The expected documents of `kind`, from canonical extended JSON.
fn load_fixture(kind: Kind) -> Vec<Document> {
    let path = fixture_path(kind);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    match Bson::try_from(json) {
        Ok(Bson::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, b)| match b {
                Bson::Document(d) => d,
                other => panic!("{}[{i}] is not a document: {other}", path.display()),
            })
            .collect(),
        Ok(other) => panic!("{} must hold an array, found {other}", path.display()),
        Err(e) => panic!("{} is not extended JSON: {e}", path.display()),
    }
}

async fn read_all(db: &Database, kind: Kind) -> Vec<Document> {
    db.collection::<Document>(kind.collection())
        .find(doc! {})
        .sort(doc! { "user_id": 1, kind.date_field(): 1 })
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("read")
}

/// (user hex, period) of a document: its unique key.
fn key(kind: Kind, d: &Document) -> (String, NaiveDate) {
    let user = d
        .get_object_id("user_id")
        .map(|o| o.to_hex())
        .unwrap_or_else(|_| "<no user_id>".into());
    let period = d
        .get_datetime(kind.date_field())
        .map(|l| label_date(*l))
        .unwrap_or(NaiveDate::MIN);
    (user, period)
}

fn show(b: &Option<Bson>) -> String {
    match b {
        None => "<absent>".to_owned(),
        Some(b) => b.clone().into_relaxed_extjson().to_string(),
    }
}

/// `docs` by key; a key met twice is a failure, worded by `twice`.
fn by_key<'a>(
    kind: Kind,
    docs: &'a [Document],
    failures: &mut Vec<String>,
    twice: impl Fn(&str, (String, NaiveDate)) -> String,
) -> BTreeMap<(String, NaiveDate), &'a Document> {
    let mut out = BTreeMap::new();
    for d in docs {
        if out.insert(key(kind, d), d).is_some() {
            failures.push(twice(kind.collection(), key(kind, d)));
        }
    }
    out
}

/// Compares the stored documents of `kind` with the fixtures; appends one
/// readable line per problem to `failures`.
fn compare(kind: Kind, expected: &[Document], stored: &[Document], failures: &mut Vec<String>) {
    let exp = by_key(kind, expected, failures, |c, k| {
        format!("{c}: fixture lists {k:?} twice")
    });
    let got = by_key(kind, stored, failures, |c, k| {
        format!("{c}: stored twice: {k:?}")
    });
    let keys: BTreeSet<_> = exp.keys().chain(got.keys()).cloned().collect();
    for k in keys {
        let name = format!(
            "{} user={} {}={}",
            kind.collection(),
            k.0,
            kind.date_field(),
            k.1
        );
        match (exp.get(&k), got.get(&k)) {
            (Some(_), None) => failures.push(format!("{name}: MISSING (in fixture, not stored)")),
            (None, Some(_)) => failures.push(format!("{name}: SURPLUS (stored, not in fixture)")),
            (Some(e), Some(s)) => {
                for f in diff(e, s) {
                    failures.push(format!(
                        "{name}: {}: expected {} / stored {}",
                        f.path,
                        show(&f.expected),
                        show(&f.stored)
                    ));
                }
            }
            (None, None) => unreachable!(),
        }
    }
}

/// Contract §5.1 bookkeeping of a document written once by a backfill at `now`.
fn check_bookkeeping(kind: Kind, d: &Document, today: NaiveDate, failures: &mut Vec<String>) {
    let (user, period) = key(kind, d);
    let name = format!(
        "{} user={user} {}={period}",
        kind.collection(),
        kind.date_field()
    );
    let mut fail = |what: String| failures.push(format!("{name}: bookkeeping: {what}"));
    if d.get_str("time_zone") != Ok(TIME_ZONE) {
        fail(format!("time_zone {:?}", d.get("time_zone")));
    }
    if d.get_i64("revision") != Ok(1) {
        fail(format!(
            "revision {:?}, expected int64 1",
            d.get("revision")
        ));
    }
    if d.get_i64("restatements") != Ok(0) {
        fail(format!(
            "restatements {:?}, expected int64 0",
            d.get("restatements")
        ));
    }
    for f in ["generated_at", "created_at", "updated_at"] {
        if d.get_datetime(f).is_err() {
            fail(format!("{f} {:?} is not a datetime", d.get(f)));
        }
    }
    if d.get("created_at") != d.get("updated_at") {
        fail("created_at != updated_at on a document written once".to_owned());
    }
    let closed = match kind {
        Kind::Report | Kind::Snapshot => period < today,
        Kind::Monthly => last_of_month(period) < today,
    };
    if d.get_bool(kind.final_field()) != Ok(closed) {
        fail(format!(
            "{} {:?}, expected {closed}",
            kind.final_field(),
            d.get(kind.final_field())
        ));
    }
    if kind == Kind::Report && d.get_datetime("finalized_at").is_err() {
        fail(format!(
            "finalized_at {:?} is not a datetime on a final report",
            d.get("finalized_at")
        ));
    }
}

fn without_bookkeeping(d: &Document) -> Document {
    let mut d = d.clone();
    for k in BOOKKEEPING {
        d.remove(k);
    }
    d
}

#[tokio::test]
async fn backfill_matches_the_hand_checked_golden_documents() {
    let client = Client::with_uri_str(support::uri()).await.expect("client");
    let db = client.database(&support::unique_db("golden"));
    let (transactions, pockets, categories) = dataset();
    db.collection::<Document>("transactions")
        .insert_many(transactions)
        .await
        .expect("insert transactions");
    db.collection::<Document>("pockets")
        .insert_many(pockets)
        .await
        .expect("insert pockets");
    db.collection::<Document>("user_categories")
        .insert_many(categories)
        .await
        .expect("insert categories");

    let cal = Calendar::from_name(TIME_ZONE).expect("zone");
    let now: DateTime<Utc> = NOW.parse().expect("now");
    let today = cal.day_of(now);
    assert_eq!(today, day("2026-02-10"));
    let range = Range {
        from: day(FROM),
        to: day(TO),
        kinds: Kind::ALL.to_vec(),
    };

    let summary = backfill(&db, cal, range.clone(), now, false)
        .await
        .expect("backfill");

    let mut stored = BTreeMap::new();
    for kind in Kind::ALL {
        stored.insert(kind, read_all(&db, kind).await);
    }
    if std::env::var("TALLY_GOLDEN_DUMP").is_ok_and(|v| v == "1") {
        for kind in Kind::ALL {
            let docs: Vec<serde_json::Value> = stored[&kind]
                .iter()
                .map(|d| Bson::Document(without_bookkeeping(d)).into_canonical_extjson())
                .collect();
            println!(
                "==== {} ====\n{}",
                kind.collection(),
                serde_json::to_string_pretty(&docs).expect("json")
            );
        }
    }

    let mut failures = Vec::new();
    for kind in Kind::ALL {
        let expected = load_fixture(kind);
        assert!(
            !expected.is_empty(),
            "{} is empty",
            fixture_path(kind).display()
        );
        compare(kind, &expected, &stored[&kind], &mut failures);
        for d in &stored[&kind] {
            check_bookkeeping(kind, d, today, &mut failures);
        }
    }
    assert!(
        failures.is_empty(),
        "stored documents differ from tests/fixtures/golden ({} problems):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );

    // T06 ("abc") and P7 ("12,5") are the invalid source documents: counted and recorded.
    assert_eq!(
        summary.rejects,
        BTreeMap::from([
            (RejectReason::InvalidAmount, 1),
            (RejectReason::InvalidBalance, 1)
        ]),
        "rejects"
    );
    let rejects: BTreeSet<(String, String, String)> = db
        .collection::<Document>("tally_rejects")
        .find(doc! {})
        .await
        .expect("find rejects")
        .try_collect::<Vec<Document>>()
        .await
        .expect("read rejects")
        .iter()
        .map(|r| {
            (
                r.get_str("collection").unwrap_or("?").to_owned(),
                r.get("source_id").map_or("?".to_owned(), |b| b.to_string()),
                r.get_str("reason").unwrap_or("?").to_owned(),
            )
        })
        .collect();
    let expected_rejects: BTreeSet<(String, String, String)> = [
        ("pockets", Bson::ObjectId(oid(P7)), "invalid_balance"),
        ("transactions", Bson::ObjectId(tx_id(6)), "invalid_amount"),
    ]
    .into_iter()
    .map(|(c, id, r)| (c.to_owned(), id.to_string(), r.to_owned()))
    .collect();
    assert_eq!(rejects, expected_rejects, "tally_rejects");

    // A second run over unchanged data writes nothing (revision stays 1).
    let again = backfill(&db, cal, range, now, false)
        .await
        .expect("second backfill");
    assert_eq!(
        again.writes.changed(),
        0,
        "second backfill wrote: {:?}",
        again.writes
    );
    for kind in Kind::ALL {
        assert_eq!(
            read_all(&db, kind).await,
            stored[&kind],
            "{} changed on the second run",
            kind.collection()
        );
    }

    db.drop().await.expect("drop database");
}
