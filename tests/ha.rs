//! High availability of `tally run`: several instances against one
//! database, one active through the lease in `tally_lease`, its writes
//! fenced by the lease's token (see `src/mongo/lease.rs`).
//!
//! The real binary as child processes against a real SecantusDB, fed by the
//! coin API's write pattern (`tests/support/workload.rs`, its trimmed
//! profile); the correctness check is the oracle (contract §7.1): `tally
//! reconcile` exits 0, twice, once the workload stops. The fence's cost on
//! the live path is measured by `benches/fence.rs`.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use bson::{doc, Document};
use chrono::{NaiveDate, Utc};
use serde_json::Value;
use tally::core::reports::Kind;
use tally::core::rng::Rng;
use tally::mongo::bulk;
use tally::mongo::connect;
use tally::mongo::lease::{self, Fence};
use tally::mongo::state::{self, Checkpoint, Claim};

use support::process::{first_to_log, instant, Env, Running, CATCH_UP, SETTLE_SECONDS};
use support::workload::{Coin, Profile};
use support::writes::report_write;

const TAILING: &str = "Tailing transactions and pockets.";
const ACQUIRED: &str = "Acquired leadership.";
const STANDING_BY: &str = "Standing by";
const LOST: &str = "Lost leadership";
const NOON_NY: &str = "2026-03-15T16:00:00Z";
const OUTPUTS: [&str; 3] = [
    "daily_financial_reports",
    "daily_financial_snapshots",
    "monthly_financial_summaries",
];

// ---------------------------------------------------------------------------
// Environment (the clock and child processes: tests/support/process.rs)
// ---------------------------------------------------------------------------

impl Env {
    /// `tally run --settle-seconds 2 --initial-days 20 --lease-ttl TTL`.
    fn start(&self, label: &str, ttl: u64) -> Running {
        let (settle, ttl) = (SETTLE_SECONDS.to_string(), ttl.to_string());
        let args = [
            "run",
            "--settle-seconds",
            &settle,
            "--initial-days",
            "20",
            "--lease-ttl",
            &ttl,
        ];
        Running::spawn(self.command(&args), "tally-ha", &self.name, label)
    }

    async fn lease_doc(&self) -> Document {
        self.db
            .collection::<Document>(lease::LEASE)
            .find_one(doc! { "_id": "tally" })
            .await
            .expect("lease")
            .expect("a lease document")
    }

    /// Every output document (and the checkpoint), keyed by collection and _id.
    async fn outputs(&self) -> BTreeMap<String, Document> {
        let mut out = BTreeMap::new();
        for coll in OUTPUTS.into_iter().chain(["tally_state"]) {
            for d in self.all(coll, doc! {}).await {
                out.insert(format!("{coll}/{}", d.get("_id").expect("_id")), d);
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// The store-level fence
// ---------------------------------------------------------------------------

/// What a new leader does to the lease: another owner, the next token.
async fn steal(env: &Env, thief: &str, ttl_ms: i64) -> Fence {
    let d = env
        .db
        .collection::<Document>(lease::LEASE)
        .find_one_and_update(
            doc! { "_id": "tally" },
            vec![doc! { "$set": {
                "owner": thief,
                "token": { "$add": ["$token", 1_i64] },
                "expires_at": { "$add": ["$$NOW", ttl_ms] },
                "released": false,
            } }],
        )
        .return_document(mongodb::options::ReturnDocument::After)
        .await
        .expect("steal")
        .expect("a lease to steal");
    Fence::new(thief, d.get_i64("token").expect("token"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_behind_a_stale_fence_fails_with_lost_lease_and_writes_nothing() {
    let env = Env::new("ha_fence", support::uri(), "UTC", instant(NOON_NY)).await;
    let db = &env.db;
    connect::init(db, false, false).await.expect("indexes");
    let ttl = Duration::from_secs(60);
    let a = lease::try_acquire(db, "a", ttl)
        .await
        .unwrap()
        .expect("a free lease is acquired");
    assert_eq!(a.token, 1);
    assert_eq!(
        lease::try_acquire(db, "b", ttl).await.unwrap(),
        None,
        "held: b stands by"
    );
    let (u1, u2) = (ObjectId::new(), ObjectId::new());
    let reports = db.collection::<Document>(Kind::Report.collection());

    // Current fence: the writes land, the checkpoint too.
    let stats = bulk::execute(db, vec![report_write(u1, "2026-03-01", 1)], Some(&a))
        .await
        .expect("a fenced write while holding the lease");
    assert_eq!(stats.inserted, 1);
    // An insert of a document that exists meets a duplicate key, which
    // aborts its transaction; it is not written (a conflict: the stored
    // document may be newer), and the stored one stays.
    let stats = bulk::execute(db, vec![report_write(u1, "2026-03-01", 2)], Some(&a))
        .await
        .expect("duplicate key path");
    assert_eq!(
        (stats.inserted, stats.updated, stats.conflicts, stats.errors),
        (0, 0, 1, 0)
    );
    let checkpoint = Checkpoint {
        last_event_at: Some(env.clock.now()),
        ..Checkpoint::default()
    };
    state::save_checkpoint(db, &checkpoint, env.clock.now(), Some(&a))
        .await
        .expect("fenced checkpoint");
    assert!(lease::renew(db, &a, ttl).await.unwrap());
    let saved = env.all("tally_state", doc! {}).await;

    // Another instance takes the lease: every write behind a's fence fails.
    let b = steal(&env, "b", 60_000).await;
    assert_eq!(b.token, 2);
    let e = bulk::execute(
        db,
        vec![
            report_write(u1, "2026-03-01", 3),
            report_write(u2, "2026-03-02", 4),
        ],
        Some(&a),
    )
    .await
    .expect_err("a stale fence");
    assert!(lease::is_lost(&e), "{e:#}");
    assert!(
        e.chain().any(|c| c.is::<lease::LostLease>()),
        "a typed error: {e:#}"
    );
    let stored = env.all(Kind::Report.collection(), doc! {}).await;
    assert_eq!(stored.len(), 1, "nothing inserted: {stored:?}");
    assert_eq!(stored[0].get_i64("total_income"), Ok(1), "nothing updated");
    let later = Checkpoint {
        last_event_at: Some(env.clock.now() + chrono::Duration::hours(1)),
        ..Checkpoint::default()
    };
    let e = state::save_checkpoint(db, &later, env.clock.now(), Some(&a))
        .await
        .expect_err("a stale checkpoint");
    assert!(lease::is_lost(&e), "{e:#}");
    assert_eq!(
        env.all("tally_state", doc! {}).await,
        saved,
        "checkpoint kept"
    );
    let e = state::finish(
        db,
        "snapshots",
        "2026-03-01".parse().unwrap(),
        1,
        env.clock.now(),
        Some(&a),
    )
    .await
    .expect_err("a stale finalization record");
    assert!(lease::is_lost(&e), "{e:#}");
    assert!(!lease::renew(db, &a, ttl).await.unwrap(), "a cannot renew");
    assert!(!lease::release(db, &a).await.unwrap(), "nor release");
    assert_eq!(reports.count_documents(doc! {}).await.unwrap(), 1);

    // The new holder writes; a claim made under the old token is taken
    // over at once.
    let day: NaiveDate = "2026-03-02".parse().unwrap();
    let stale = chrono::Duration::minutes(10);
    let now = env.clock.now();
    let claimed = state::claim(db, "snapshots", day, "a", now, stale, Some(&a)).await;
    assert_eq!(claimed.unwrap(), Claim::Mine);
    let taken = state::claim(db, "snapshots", day, "b", now, stale, Some(&b)).await;
    assert_eq!(
        taken.unwrap(),
        Claim::Mine,
        "an older lease's claim is dead"
    );
    let again = state::claim(db, "snapshots", day, "a", now, stale, Some(&a)).await;
    assert_eq!(again.unwrap(), Claim::Taken);
    bulk::execute(db, vec![report_write(u2, "2026-03-02", 5)], Some(&b))
        .await
        .expect("the new holder writes");
    assert_eq!(reports.count_documents(doc! {}).await.unwrap(), 2);

    // Released: the releaser's writes are refused (its check would renew
    // the lease), and the next acquisition is immediate, with the next token.
    assert!(lease::release(db, &b).await.unwrap());
    let e = bulk::execute(db, vec![report_write(u2, "2026-03-03", 6)], Some(&b))
        .await
        .expect_err("a released fence");
    assert!(lease::is_lost(&e), "{e:#}");
    assert_eq!(reports.count_documents(doc! {}).await.unwrap(), 2);
    let c = lease::try_acquire(db, "c", ttl)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(c.token, 3);
    let info = lease::read(db).await.unwrap().expect("lease");
    assert_eq!(info.owner.as_deref(), Some("c"));
    assert!(info.expires_at.expect("expiry") > Utc::now() + chrono::Duration::seconds(50));
}

/// A large fenced write goes in several transactions once one has run for
/// the fence's budget (a sixth of the lease TTL), so the holder's renewals
/// do not wait behind it for longer than the lease lasts; with a long TTL
/// the same writes go in one transaction (they are under its operation
/// cap). Each transaction's lease check adds one to the lease's `writes`.
#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_write_ends_its_transaction_within_a_sixth_of_the_ttl() {
    let env = Env::new("ha_budget", support::uri(), "UTC", instant(NOON_NY)).await;
    let db = &env.db;
    connect::init(db, false, false).await.expect("indexes");
    // New documents each time (an insert of a stored one is a conflict).
    let writes = |day: &str| -> Vec<_> {
        (0..4_000)
            .map(|_| report_write(ObjectId::new(), day, 1))
            .collect()
    };
    let transactions = |lease: Document| lease.get_i64("writes").unwrap_or(0);

    let long = lease::try_acquire(db, "long", Duration::from_secs(600))
        .await
        .unwrap()
        .expect("a free lease");
    let before = transactions(env.lease_doc().await);
    let stats = bulk::execute(db, writes("2026-03-01"), Some(&long))
        .await
        .expect("write");
    assert_eq!(stats.inserted, 4_000);
    assert_eq!(
        transactions(env.lease_doc().await) - before,
        1,
        "4,000 operations under a long TTL: one transaction"
    );
    assert!(lease::release(db, &long).await.unwrap());

    let short = lease::try_acquire(db, "short", Duration::from_secs(1))
        .await
        .unwrap()
        .expect("a released lease");
    let before = transactions(env.lease_doc().await);
    let began = Instant::now();
    let stats = bulk::execute(db, writes("2026-03-02"), Some(&short))
        .await
        .expect("write");
    let took = began.elapsed();
    assert_eq!(stats.inserted, 4_000, "every document, once");
    let n = transactions(env.lease_doc().await) - before;
    eprintln!("4,000 operations under a 1 s TTL: {n} transactions in {took:?}");
    // The whole write takes longer than the budget (~167 ms) on
    // SecantusDB (about 10,000 inserts a second), so it must be split.
    assert!(
        n >= 2 || took < Duration::from_millis(167),
        "one transaction of {took:?} under a 1 s TTL"
    );
    let stored = env
        .all(
            Kind::Report.collection(),
            doc! { "report_date": { "$gte": bson::DateTime::parse_rfc3339_str("2026-03-02T00:00:00Z").unwrap() } },
        )
        .await;
    assert_eq!(stored.len(), 4_000, "all written by the split write");
}

/// Each fenced transaction renews the lease as it checks the token: the
/// holder's renewal task has to get past the holder's own transactions on
/// the lease document, and back-to-back transactions kept it waiting past a
/// 3 s TTL on a busy SecantusDB (a standby then took over mid-backfill). So
/// a holder that keeps committing keeps its lease with no renewal task at
/// all, and once it stops, the lease expires as before.
#[tokio::test(flavor = "multi_thread")]
async fn a_holder_that_keeps_committing_keeps_its_lease_without_renewals() {
    let env = Env::new("ha_commit_renews", support::uri(), "UTC", instant(NOON_NY)).await;
    let db = &env.db;
    connect::init(db, false, false).await.expect("indexes");
    let ttl = Duration::from_secs(2);
    let a = lease::try_acquire(db, "a", ttl)
        .await
        .unwrap()
        .expect("a free lease");
    let began = Instant::now();
    let mut day = 0;
    while began.elapsed() < 3 * ttl {
        day += 1;
        let date = format!("2026-03-{:02}", day % 28 + 1);
        bulk::execute(db, vec![report_write(ObjectId::new(), &date, 1)], Some(&a))
            .await
            .expect("a fenced write while holding the lease");
        assert_eq!(
            lease::try_acquire(db, "b", ttl).await.unwrap(),
            None,
            "{:?} after the acquisition, {day} commits in, with no renewal task",
            began.elapsed()
        );
        tokio::time::sleep(ttl / 4).await;
    }
    // Nothing commits any more: the lease runs out and b takes it.
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    let b = lease::try_acquire(db, "b", ttl)
        .await
        .unwrap()
        .expect("an expired lease is free");
    assert_eq!(b.token, a.token + 1);
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// Two instances with a 3 s lease: one active; kill -9 it mid-workload and
/// the other takes over within the TTL (plus the standby's poll and a
/// margin); the oracle agrees afterwards, nothing lost or doubled.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_leader_hands_over_within_the_ttl() {
    const TTL: u64 = 3;
    let env = Env::new("ha_kill", support::uri(), "Europe/Paris", instant(NOON_NY)).await;
    let mut coin = Coin::new(&env, Profile::TRIMMED).await;
    coin.population(&env, 5, 8, 15, 21).await;
    let mut rng = Rng::new(5);
    let mut one = env.start("one", TTL);
    let mut two = env.start("two", TTL);
    let first = first_to_log(&mut [&mut one, &mut two], ACQUIRED, CATCH_UP).await;
    let (mut leader, mut standby) = if first == 0 { (one, two) } else { (two, one) };
    standby.wait_log(STANDING_BY, CATCH_UP).await;
    leader.wait_log(TAILING, CATCH_UP).await;
    let owner = leader.owner().expect("owner in the log");
    let lease = env.lease_doc().await;
    assert_eq!(lease.get_str("owner"), Ok(owner.as_str()), "{lease}");
    let token = lease.get_i64("token").expect("token");

    coin.random_ops(&env, &mut rng, 30).await;
    tokio::time::sleep(Duration::from_secs(TTL)).await; // renewals go on
    assert_eq!(standby.count(ACQUIRED), 0, "one active at a time");
    assert_eq!(env.lease_doc().await.get_i64("token"), Ok(token));

    // Killed in the middle of a burst; the workload goes on.
    coin.random_ops(&env, &mut rng, 15).await;
    leader.kill9();
    let killed = Instant::now();
    let ops = coin.random_ops(&env, &mut rng, 15);
    let took_over = async {
        standby
            .wait_log(ACQUIRED, Duration::from_secs(TTL * 4))
            .await;
        killed.elapsed()
    };
    let ((), took) = futures::join!(ops, took_over);
    let bound = Duration::from_secs(TTL) + Duration::from_secs(TTL) / 3 + Duration::from_secs(2);
    assert!(took <= bound, "took over after {took:?} (bound {bound:?})");
    eprintln!("standby took over {took:?} after kill -9 (TTL {TTL} s)");
    standby.wait_log(TAILING, CATCH_UP).await;
    assert!(
        standby.log().contains("resumed=true"),
        "{}",
        standby.tail(10)
    );
    let lease = env.lease_doc().await;
    assert_eq!(lease.get_str("owner").ok(), standby.owner().as_deref());
    assert_eq!(lease.get_i64("token"), Ok(token + 1), "{lease}");

    coin.random_ops(&env, &mut rng, 15).await;
    env.converged(20, &[&standby]).await;
    assert_eq!(standby.count(LOST), 0, "{}", standby.tail(20));
    assert_eq!(standby.terminate().await.code(), Some(0));
}

/// A partitioned leader: its lease is taken in the database (as a new
/// leader would) while it runs and events keep coming. None of its later
/// writes lands; it notices, stands by, and takes over again once the
/// thief releases the lease.
#[tokio::test(flavor = "multi_thread")]
async fn a_deposed_leader_writes_nothing_and_stands_by() {
    let env = Env::new("ha_steal", support::uri(), "UTC", instant(NOON_NY)).await;
    let mut coin = Coin::new(&env, Profile::TRIMMED).await;
    coin.population(&env, 4, 6, 15, 31).await;
    let mut rng = Rng::new(8);
    // A long TTL: no renewal during the test, so only the fence can stop it.
    let mut run = env.start("a", 600);
    run.wait_log(TAILING, CATCH_UP).await;
    coin.random_ops(&env, &mut rng, 20).await;
    env.converged(20, &[&run]).await;

    let thief = steal(&env, "thief", 600_000).await;
    let before = env.outputs().await;
    coin.random_ops(&env, &mut rng, 25).await;
    run.wait_log(LOST, CATCH_UP).await;
    run.wait_log(STANDING_BY, CATCH_UP).await;
    coin.random_ops(&env, &mut rng, 10).await;
    tokio::time::sleep(Duration::from_secs(SETTLE_SECONDS + 2)).await;
    let after = env.outputs().await;
    assert!(run.alive(), "{}", run.tail(20));
    let changed: Vec<&String> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, _)| k)
        .chain(before.keys().filter(|k| !after.contains_key(*k)))
        .collect();
    assert!(
        changed.is_empty(),
        "written after the steal: {changed:?}\n{}",
        run.tail(30)
    );
    assert_eq!(run.count(LOST), 1, "{}", run.tail(20));
    assert_eq!(env.lease_doc().await.get_str("owner"), Ok("thief"));

    // The thief lets go: the standby takes over at once and catches up.
    assert!(lease::release(&env.db, &thief).await.unwrap());
    let released = Instant::now();
    run.wait_count(ACQUIRED, 2, CATCH_UP).await;
    assert!(
        released.elapsed() < Duration::from_secs(10),
        "woken by the release, not the 200 s poll"
    );
    run.wait_count(TAILING, 2, CATCH_UP).await;
    env.converged(20, &[&run]).await;
    assert_eq!(run.terminate().await.code(), Some(0));
}

/// SIGTERM of the leader: it flushes, checkpoints, releases the lease and
/// exits 0 within 10 s; the standby takes over well under the TTL.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_of_the_leader_hands_over_at_once() {
    const TTL: u64 = 15;
    let env = Env::new(
        "ha_term",
        support::uri(),
        "America/New_York",
        instant(NOON_NY),
    )
    .await;
    let mut coin = Coin::new(&env, Profile::TRIMMED).await;
    coin.population(&env, 4, 6, 15, 41).await;
    let mut rng = Rng::new(9);
    let mut leader = env.start("leader", TTL);
    leader.wait_log(TAILING, CATCH_UP).await;
    let mut standby = env.start("standby", TTL);
    standby.wait_log(STANDING_BY, CATCH_UP).await;

    let o = env.tally(&["status", "--json"]).await;
    assert_eq!(o.status.code(), Some(0));
    let status: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        status["lease"]["owner"].as_str(),
        leader.owner().as_deref(),
        "{status}"
    );
    assert_eq!(status["lease"]["held"], Value::Bool(true), "{status}");
    let o = env.tally(&["status"]).await;
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("leader lease:") && text.contains("held by"),
        "{text}"
    );

    coin.random_ops(&env, &mut rng, 20).await;
    // Measured from the signal: the leader's last flush and checkpoint
    // come first, then the release wakes the standby.
    let signalled = Instant::now();
    let status = leader.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", leader.tail(20));
    let log = leader.log();
    assert!(
        log.contains("Stopped cleanly.") && log.contains("Released leadership."),
        "{log}"
    );
    standby.wait_log(ACQUIRED, Duration::from_secs(TTL)).await;
    let took = signalled.elapsed();
    eprintln!("standby took over {took:?} after SIGTERM (TTL {TTL} s)");
    assert!(
        took < Duration::from_secs(TTL / 3),
        "took over {took:?} after SIGTERM"
    );
    standby.wait_log(TAILING, CATCH_UP).await;
    coin.random_ops(&env, &mut rng, 20).await;
    env.converged(20, &[&standby]).await;
    assert_eq!(standby.terminate().await.code(), Some(0));
}
