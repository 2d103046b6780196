//! End-to-end tests of `tally init`, `seed`, `backfill` and `reconcile`,
//! run as the real binary against a real MongoDB-wire server.

mod support;

use std::collections::HashMap;
use std::process::Output;

use bson::oid::ObjectId;
use bson::{doc, Bson, Document};
use futures::TryStreamExt;
use mongodb::{Client, Database};
use serde_json::Value;
use tally::mongo::connect;
use tally::plan::write;

const NOW: &str = "2026-03-15T12:00:00Z";
const FROM: &str = "2026-01-20";
const TO: &str = "2026-03-20";

fn tally(db: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env("TALLY_MONGODB_URI", support::uri())
        .env("TALLY_DATABASE", db)
        .env("TALLY_TIMEZONE", "America/New_York")
        .env("TALLY_NOW", NOW)
        .env("TALLY_LOG", "warn")
        .arg("--quiet")
        .output()
        .expect("tally runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

async fn database(name: &str) -> Database {
    Client::with_uri_str(support::uri())
        .await
        .expect("client")
        .database(name)
}

async fn all(db: &Database, coll: &str) -> Vec<Document> {
    db.collection::<Document>(coll)
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

const OUTPUTS: [&str; 3] = [
    "daily_financial_reports",
    "daily_financial_snapshots",
    "monthly_financial_summaries",
];

/// (collection, user, date) → (revision, created_at) of every output document.
async fn bookkeeping(db: &Database) -> HashMap<(String, ObjectId, i64), (i64, i64)> {
    let mut out = HashMap::new();
    for (coll, field) in OUTPUTS
        .iter()
        .zip(["report_date", "snapshot_date", "month"])
    {
        for d in all(db, coll).await {
            let key = (
                coll.to_string(),
                d.get_object_id("user_id").unwrap(),
                millis(&d, field),
            );
            out.insert(
                key,
                (d.get_i64("revision").unwrap(), millis(&d, "created_at")),
            );
        }
    }
    out
}

fn millis(d: &Document, field: &str) -> i64 {
    d.get_datetime(field).unwrap().timestamp_millis()
}

fn reconcile_json(db: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["reconcile", "--from", FROM, "--to", TO, "--json"];
    args.extend_from_slice(extra);
    let o = tally(db, &args);
    let json = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "reconcile --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap(), json)
}

fn differences(report: &Value) -> Vec<(String, String, String, Vec<String>)> {
    report["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let fields = d["fields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["field"].as_str().unwrap().to_owned())
                .collect();
            (
                d["collection"].as_str().unwrap().to_owned(),
                d["period"].as_str().unwrap().to_owned(),
                d["difference"].as_str().unwrap().to_owned(),
                fields,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_is_idempotent_and_reconcile_finds_and_repairs_tampering() {
    let name = support::unique_db("bf");
    ok(tally(&name, &["init", "--create-source-index"]));
    let seeded = ok(tally(
        &name,
        &[
            "seed",
            "--users",
            "25",
            "--transactions-per-user",
            "24",
            "--from",
            "2026-01-15",
            "--to",
            TO,
        ],
    ));
    let invalid: u64 = seeded
        .split(", ")
        .find_map(|p| p.strip_suffix(" invalid"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(invalid > 0, "the seed has dirt: {seeded}");

    let first = ok(tally(&name, &["backfill", "--from", FROM, "--to", TO]));
    assert!(first.contains(" 0 updated, 0 deleted"), "{first}");
    let db = database(&name).await;
    let reports = all(&db, "daily_financial_reports").await;
    assert!(reports.len() > 100, "reports written: {}", reports.len());
    // Closed days are final, today (2026-03-15 in New York) and later are not.
    for r in &reports {
        let day = r.get_datetime("report_date").unwrap().timestamp_millis();
        let closed = day < 1_773_532_800_000; // 2026-03-15T00:00:00Z label
        assert_eq!(r.get_bool("is_final").unwrap(), closed, "{r}");
        assert_eq!(r.get_str("time_zone").unwrap(), "America/New_York");
    }
    assert!(!all(&db, "daily_financial_snapshots").await.is_empty());
    let snapshot_days: Vec<i64> = all(&db, "daily_financial_snapshots")
        .await
        .iter()
        .map(|s| s.get_datetime("snapshot_date").unwrap().timestamp_millis())
        .collect();
    assert!(
        snapshot_days.iter().all(|d| *d < 1_773_532_800_000),
        "no snapshot of today or later"
    );
    // Every invalid source document is recorded once.
    let rejects = all(&db, "tally_rejects").await;
    let tx_rejects = rejects
        .iter()
        .filter(|r| r.get_str("collection") == Ok("transactions"))
        .count() as u64;
    assert_eq!(tx_rejects, invalid, "{rejects:?}");

    // A second run over unchanged data changes nothing.
    let before = bookkeeping(&db).await;
    let second = ok(tally(&name, &["backfill", "--from", FROM, "--to", TO]));
    assert!(
        second.contains("0 inserted, 0 updated, 0 deleted"),
        "{second}"
    );
    assert_eq!(bookkeeping(&db).await, before);

    let (code, clean) = reconcile_json(&name, &[]);
    assert_eq!(code, 0, "{clean:#}");
    assert_eq!(clean["clean"], Value::Bool(true));

    // Tamper: change a live transaction's amount on a closed day, delete a
    // report, edit a snapshot.
    let txs = db.collection::<Document>("transactions");
    let victim = txs
        .find_one(doc! {
            "type": "expense", "deleted_at": Bson::Null, "user_id": { "$type": "objectId" },
            "amount": { "$type": "decimal" },
            "date": { "$gte": bson::DateTime::from_millis(1_770_000_000_000), "$lt": bson::DateTime::from_millis(1_772_000_000_000) },
        })
        .await
        .unwrap()
        .expect("a decimal expense in February");
    txs.update_one(
        doc! { "_id": victim.get("_id").unwrap() },
        doc! { "$set": { "amount": "123456.78" } },
    )
    .await
    .unwrap();
    let victim_user = victim.get_object_id("user_id").unwrap();

    let reports_coll = db.collection::<Document>("daily_financial_reports");
    let gone = reports_coll
        .find_one(doc! { "user_id": { "$ne": victim_user }, "is_final": true })
        .await
        .unwrap()
        .unwrap();
    reports_coll
        .delete_one(doc! { "_id": gone.get("_id").unwrap() })
        .await
        .unwrap();

    let snaps = db.collection::<Document>("daily_financial_snapshots");
    let edited = snaps
        .find_one(doc! { "user_id": { "$ne": victim_user } })
        .await
        .unwrap()
        .unwrap();
    snaps
        .update_one(
            doc! { "_id": edited.get("_id").unwrap() },
            doc! { "$set": { "total_balance": bson::Decimal128::from_bytes([0; 16]) } },
        )
        .await
        .unwrap();

    let (code, dirty) = reconcile_json(&name, &[]);
    assert_eq!(code, 1, "{dirty:#}");
    let diffs = differences(&dirty);
    let label = |d: &Document, f: &str| {
        let ms = d.get_datetime(f).unwrap().timestamp_millis();
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .date_naive()
            .to_string()
    };
    assert!(
        diffs
            .iter()
            .any(|(c, p, k, _)| c == "daily_financial_reports"
                && *p == label(&gone, "report_date")
                && k == "missing"),
        "deleted report listed as missing: {diffs:?}"
    );
    assert!(
        diffs
            .iter()
            .any(|(c, p, k, f)| c == "daily_financial_snapshots"
                && *p == label(&edited, "snapshot_date")
                && k == "differs"
                && f.contains(&"total_balance".to_owned())),
        "edited snapshot listed: {diffs:?}"
    );
    assert!(
        diffs
            .iter()
            .any(|(c, _, k, f)| c == "daily_financial_reports"
                && k == "differs"
                && f.contains(&"total_expense".to_owned())),
        "changed transaction shows in its report: {diffs:?}"
    );
    assert!(
        diffs
            .iter()
            .any(|(c, _, _, f)| c == "monthly_financial_summaries"
                && f.contains(&"expense".to_owned())),
        "and in its month: {diffs:?}"
    );

    let (code, repaired) = reconcile_json(&name, &["--repair"]);
    assert_eq!(code, 1, "differences were found before the repair");
    assert_eq!(repaired["repaired"]["conflicts"], 0);
    assert_eq!(repaired["repaired"]["errors"], 0);
    let (code, after) = reconcile_json(&name, &[]);
    assert_eq!(code, 0, "clean after repair: {after:#}");

    // A restated final report: revision + 1 and restatements + 1.
    let day = chrono::DateTime::from_timestamp_millis(
        victim.get_datetime("date").unwrap().timestamp_millis(),
    )
    .unwrap();
    let restated = reports_coll
        .find_one(doc! { "user_id": victim_user, "total_expense": { "$gte": "100000".parse::<bson::Decimal128>().unwrap() } })
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("report of {day} holds the new amount"));
    assert_eq!(restated.get_i64("revision").unwrap(), 2);
    assert_eq!(restated.get_i64("restatements").unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_without_live_transactions_is_deleted_and_corrected_documents_leave_rejects() {
    let name = support::unique_db("bf2");
    let db = database(&name).await;
    let user = ObjectId::new();
    let pocket = ObjectId::new();
    db.collection::<Document>("pockets")
        .insert_one(
            doc! { "_id": pocket, "user_id": user, "name": "Main", "type": "main", "balance": 7 },
        )
        .await
        .unwrap();
    let at = |ms: i64| bson::DateTime::from_millis(ms);
    let feb_10 = 1_770_724_800_000; // 2026-02-10T12:00:00Z
    let txs = db.collection::<Document>("transactions");
    txs.insert_many([
        doc! { "_id": 1, "user_id": user, "type": "income", "amount": 10, "pocket_to_id": pocket, "date": at(feb_10) },
        doc! { "_id": 2, "user_id": user, "type": "expense", "amount": "3", "pocket_from_id": pocket, "date": at(feb_10 + 86_400_000) },
        doc! { "_id": 3, "user_id": user, "type": "expense", "amount": "three", "pocket_from_id": pocket, "date": at(feb_10) },
    ])
    .await
    .unwrap();
    ok(tally(
        &name,
        &["backfill", "--from", "2026-02-01", "--to", "2026-02-28"],
    ));
    let reports = db.collection::<Document>("daily_financial_reports");
    assert_eq!(reports.count_documents(doc! {}).await.unwrap(), 2);
    let rejects = db.collection::<Document>("tally_rejects");
    let reject = rejects
        .find_one(doc! { "source_id": 3 })
        .await
        .unwrap()
        .expect("reject recorded");
    assert_eq!(reject.get_str("reason").unwrap(), "invalid_amount");

    // Soft-delete the only transaction of Feb 11; correct the invalid one.
    txs.update_one(
        doc! { "_id": 2 },
        doc! { "$set": { "deleted_at": at(feb_10 + 90_000_000) } },
    )
    .await
    .unwrap();
    txs.update_one(doc! { "_id": 3 }, doc! { "$set": { "amount": "3" } })
        .await
        .unwrap();
    ok(tally(
        &name,
        &["backfill", "--from", "2026-02-01", "--to", "2026-02-28"],
    ));
    let left: Vec<Document> = reports
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "the report of Feb 11 is gone: {left:?}");
    assert_eq!(left[0].get_i64("transaction_count").unwrap(), 2);
    assert_eq!(
        rejects.count_documents(doc! {}).await.unwrap(),
        0,
        "corrected document's reject removed"
    );
    let (code, _) = {
        let o = tally(
            &name,
            &["reconcile", "--from", "2026-02-01", "--to", "2026-02-28"],
        );
        (o.status.code(), stdout(&o))
    };
    assert_eq!(code, Some(0));
}

#[test]
fn bad_flags_exit_2_with_a_message_that_says_what_to_fix_and_an_unreachable_server_exits_3() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["backfill", "--from", "2026-13-01", "--to", "2026-12-31"],
            "YYYY-MM-DD",
        ),
        (
            &["backfill", "--from", "2026-02-01", "--to", "2026-01-01"],
            "is after --to",
        ),
        (
            &[
                "--timezone",
                "Mars/Base",
                "backfill",
                "--from",
                "2026-01-01",
                "--to",
                "2026-01-02",
            ],
            "unknown time zone",
        ),
        (
            &[
                "backfill",
                "--from",
                "2026-01-01",
                "--to",
                "2026-01-02",
                "--kinds",
                "weekly",
            ],
            "unknown kind",
        ),
        (
            &[
                "--mongodb-uri",
                "mongodb://alice:hunter2@127.0.0.1:9/?serverSelectionTimeoutMS=500",
                "init",
            ],
            "cannot reach MongoDB",
        ),
    ];
    // An unreachable server is not a usage error: a restart can fix it.
    let (unreachable, cases) = cases.split_last().expect("cases");
    let expected = cases.iter().map(|c| (c, 2)).chain([(unreachable, 3)]);
    for ((args, expect), status) in expected {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(*args)
            .env_remove("TALLY_MONGODB_URI")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(status), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains("hunter2"), "credentials leak: {err}");
    }
    // An invalid URI is: it exits 2.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["--mongodb-uri", "mangodb://nowhere", "init"])
        .env_remove("TALLY_MONGODB_URI")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("invalid MongoDB URI"), "{err}");
}

/// Writes find stored documents by `_id`: a new document gets its `_id`
/// from tally, a guarded update keeps it and is matched by it, a stale
/// `_id` is a conflict that changes nothing, and an insert whose key is
/// taken by a document with another `_id` is upserted keeping that one.
#[tokio::test(flavor = "multi_thread")]
async fn writes_address_stored_documents_by_id() {
    use chrono::{NaiveDate, TimeZone, Utc};
    use tally::core::reports::Kind;
    use tally::mongo::bulk;
    use tally::plan::write::{key_filter, write_over, Prior};

    let db = database("backfill_by_id").await;
    db.drop().await.expect("drop");
    connect::init(&db, false, false).await.expect("indexes");
    let reports = db.collection::<Document>(Kind::Report.collection());
    let now = Utc.with_ymd_and_hms(2026, 3, 15, 12, 0, 0).unwrap();
    let (user, day) = (
        ObjectId::new(),
        NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
    );
    let filter = key_filter(Kind::Report, user, day);
    let content = |n: i64| doc! { "transaction_count": n, "is_final": false };
    let stored = || async {
        reports
            .find_one(filter.clone())
            .await
            .unwrap()
            .expect("stored")
    };

    let first = write_over(Kind::Report, user, day, content(1), None, now, "UTC");
    let write::Write::Upsert { set, .. } = &first else {
        panic!("an upsert")
    };
    let id = set
        .get_object_id("_id")
        .expect("a new document carries its _id");
    let stats = bulk::execute(&db, vec![first], None).await.unwrap();
    assert_eq!(stats.inserted, 1);
    let v1 = stored().await;
    assert_eq!(v1.get_object_id("_id").unwrap(), id);

    let second = write_over(
        Kind::Report,
        user,
        day,
        content(2),
        Some(&Prior::of(Kind::Report, &v1)),
        now,
        "UTC",
    );
    let stats = bulk::execute(&db, vec![second], None).await.unwrap();
    assert_eq!((stats.updated, stats.conflicts), (1, 0));
    let v2 = stored().await;
    assert_eq!(
        v2.get_object_id("_id").unwrap(),
        id,
        "a replacement keeps the _id"
    );
    assert_eq!(
        (
            v2.get_i64("revision").unwrap(),
            v2.get_i64("transaction_count").unwrap()
        ),
        (2, 2)
    );

    // The same revision under another _id: not this document, a conflict.
    let mut stale = v2.clone();
    stale.insert("_id", ObjectId::new());
    let third = write_over(
        Kind::Report,
        user,
        day,
        content(3),
        Some(&Prior::of(Kind::Report, &stale)),
        now,
        "UTC",
    );
    let stats = bulk::execute(&db, vec![third], None).await.unwrap();
    assert_eq!((stats.updated, stats.conflicts), (0, 1));
    assert_eq!(stored().await.get_i64("transaction_count").unwrap(), 2);

    // A writer that believes the document is new (fresh _id): the insert
    // meets the key and is not written (the stored document may be newer),
    // a conflict that makes the caller read the stored document again.
    let fourth = write_over(Kind::Report, user, day, content(4), None, now, "UTC");
    let stats = bulk::execute(&db, vec![fourth], None).await.unwrap();
    assert_eq!(
        (stats.inserted, stats.updated, stats.conflicts, stats.errors),
        (0, 0, 1, 0)
    );
    assert_eq!(stored().await, v2, "the stored document is untouched");

    // A stored document without a revision (another writer's): replaced
    // under its _id, guarded by the missing revision; revision 1 after.
    let mut foreign = v2.clone();
    foreign.remove("revision");
    reports
        .replace_one(doc! { "_id": id }, foreign.clone())
        .await
        .unwrap();
    let fifth = write_over(
        Kind::Report,
        user,
        day,
        content(5),
        Some(&Prior::of(Kind::Report, &foreign)),
        now,
        "UTC",
    );
    let stats = bulk::execute(&db, vec![fifth], None).await.unwrap();
    assert_eq!((stats.updated, stats.conflicts), (1, 0));
    let v5 = stored().await;
    assert_eq!(v5.get_object_id("_id").unwrap(), id);
    assert_eq!(
        (
            v5.get_i64("revision").unwrap(),
            v5.get_i64("transaction_count").unwrap()
        ),
        (1, 5)
    );
    assert_eq!(reports.count_documents(doc! {}).await.unwrap(), 1);

    // A surplus document is deleted by the same _id.
    let gone = write::Write::Delete {
        kind: Kind::Report,
        filter: doc! { "_id": id },
    };
    let stats = bulk::execute(&db, vec![gone], None).await.unwrap();
    assert_eq!(stats.deleted, 1);
    assert_eq!(reports.count_documents(doc! {}).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn fenced_inserts_skip_taken_keys_and_write_the_rest() {
    use chrono::{NaiveDate, TimeZone, Utc};
    use tally::core::reports::Kind;
    use tally::mongo::bulk;
    use tally::mongo::lease;
    use tally::plan::write::write_over;

    let db = database("backfill_fenced_dup").await;
    db.drop().await.expect("drop");
    connect::init(&db, false, false).await.expect("indexes");
    let fence = lease::try_acquire(&db, "a", std::time::Duration::from_secs(60))
        .await
        .unwrap()
        .expect("a free lease");
    let reports = db.collection::<Document>(Kind::Report.collection());
    let now = Utc.with_ymd_and_hms(2026, 3, 15, 12, 0, 0).unwrap();
    let day = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
    let users: Vec<ObjectId> = (0..4).map(|_| ObjectId::new()).collect();
    let new = |user: ObjectId, n: i64| {
        write_over(
            Kind::Report,
            user,
            day,
            doc! { "transaction_count": n, "is_final": false },
            None,
            now,
            "UTC",
        )
    };
    // Users 1 and 3 already have their document (another writer's).
    let first = vec![new(users[1], 1), new(users[3], 1)];
    bulk::execute(&db, first, Some(&fence)).await.unwrap();
    let taken = all(&db, Kind::Report.collection()).await;

    // With a write to another collection in the same transaction: the
    // retry without the taken keys writes it too, once.
    let mut writes: Vec<_> = users.iter().map(|u| new(*u, 2)).collect();
    writes.push(write_over(
        Kind::Snapshot,
        users[0],
        day,
        doc! { "total_balance": 5, "is_final": false },
        None,
        now,
        "UTC",
    ));
    let stats = bulk::execute(&db, writes, Some(&fence)).await.unwrap();
    assert_eq!(
        (stats.inserted, stats.updated, stats.conflicts, stats.errors),
        (3, 0, 2, 0)
    );
    let snapshots = all(&db, Kind::Snapshot.collection()).await;
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert_eq!(snapshots[0].get_object_id("user_id").unwrap(), users[0]);
    for (i, user) in users.iter().enumerate() {
        let d = reports
            .find_one(doc! { "user_id": user })
            .await
            .unwrap()
            .expect("stored");
        let expected = if i % 2 == 1 { 1 } else { 2 };
        assert_eq!(
            d.get_i64("transaction_count").unwrap(),
            expected,
            "user {i}"
        );
    }
    for d in taken {
        let now = reports
            .find_one(doc! { "_id": d.get_object_id("_id").unwrap() })
            .await
            .unwrap();
        assert_eq!(now, Some(d), "a taken key's document is untouched");
    }
}

/// Without pre-images a hard delete is found through the reports that list
/// it: `init` then indexes the listed ids, each lookup is answered by its
/// index, and a report that lists both a sought transaction and a sought
/// pocket is read once. Told to use pre-images, `init` leaves report
/// writes without these indexes.
#[tokio::test(flavor = "multi_thread")]
async fn hard_deletes_without_pre_images_are_located_by_index() {
    use chrono::NaiveDate;
    use tally::core::reports::Kind;
    use tally::service::backend::{Backend, Mongo};

    let db = database("backfill_locate").await;
    db.drop().await.expect("drop");
    let reports = db.collection::<Document>(Kind::Report.collection());
    let names = || async { reports.list_index_names().await.unwrap_or_default() };
    let lines = connect::init(&db, false, true).await.expect("indexes");
    let listed = |names: &[String], field: &str| names.iter().any(|n| n.starts_with(field));
    let with_images = names().await;
    for field in connect::LOCATE_FIELDS {
        assert!(
            !listed(&with_images, field),
            "{field} indexed with pre-images on: {with_images:?} ({lines:?})"
        );
    }
    let lines = connect::init(&db, false, false).await.expect("indexes");
    let indexed = names().await;
    for field in connect::LOCATE_FIELDS {
        assert!(
            listed(&indexed, field),
            "{field} not indexed: {indexed:?} ({lines:?})"
        );
    }

    let (user, other) = (ObjectId::new(), ObjectId::new());
    let (pocket, tx, elsewhere) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
    let day = |d: u32| NaiveDate::from_ymd_opt(2026, 3, d).unwrap();
    let report = |user: ObjectId, d: u32, pocket: ObjectId, txs: &[ObjectId]| {
        let at = day(d).and_hms_opt(0, 0, 0).unwrap().and_utc();
        let listed: Vec<Bson> = txs
            .iter()
            .map(|t| Bson::Document(doc! { "transaction_id": t }))
            .collect();
        doc! {
            "user_id": user,
            "report_date": bson::DateTime::from_millis(at.timestamp_millis()),
            "transactions_by_pocket": [{ "pocket_id": pocket, "transactions": listed }],
        }
    };
    reports
        .insert_many([
            report(user, 3, pocket, &[tx]),
            report(user, 4, pocket, &[ObjectId::new()]),
            report(other, 3, ObjectId::new(), &[elsewhere]),
        ])
        .await
        .expect("reports");

    let located = Mongo(db.clone())
        .locate(vec![Bson::ObjectId(tx), Bson::ObjectId(pocket)])
        .await
        .expect("locate");
    assert_eq!(
        located.transactions.get(&Bson::ObjectId(tx).to_string()),
        Some(&vec![(user, day(3))])
    );
    assert!(!located
        .transactions
        .contains_key(&Bson::ObjectId(elsewhere).to_string()));
    let owners = located
        .pockets
        .get(&Bson::ObjectId(pocket).to_string())
        .expect("the pocket's owners");
    assert_eq!(owners.iter().collect::<Vec<_>>(), [&user]);

    // Each lookup is planned on its index, not a collection scan.
    for field in connect::LOCATE_FIELDS {
        let plan = db
            .run_command(doc! { "explain": { "find": Kind::Report.collection(), "filter": { field: { "$in": [tx] } } } })
            .await
            .expect("explain");
        let winning = format!(
            "{:?}",
            plan.get_document("queryPlanner")
                .and_then(|q| q.get_document("winningPlan"))
        );
        assert!(winning.contains("IXSCAN"), "{field}: {winning}");
    }
}
