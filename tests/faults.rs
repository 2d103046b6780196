//! Real-server faults with writes flowing throughout: `kill -9` of the
//! leader under load, takeover by a standby, a holder stalled past its
//! lease again and again while it works a backlog off, SIGTERM while a dead leader
//! still holds the lease, a reject on a quiet stream, a server error on
//! commit, history lost under a paused or a running leader, and hard
//! deletes before the in-memory window without pre-images.
//!
//! The background writer is `tally seed --users 0 --trickle RATE` (the
//! API's pattern: a transaction dated now, then its pocket balance) as a
//! child process; targeted writes go through the driver. The end state is
//! always the oracle: `tally reconcile` over the managed range exits 0,
//! twice (`Env::caught_up`). Every wait is for an event with a generous
//! deadline; the only speed asserted is the takeover bound (TTL + 5 s) and
//! the 2 s bound of a reject on a quiet stream.
//!
//! Random choices print their seed; rerun one with `FAULTS_SEED=N`.
//!
//! Each test has a SecantusDB of its own (`Env::own`; one server when
//! `TALLY_TEST_MONGODB_URI` names one). SecantusDB is one Python process:
//! on a server shared by the tests running at once, one test's scans held
//! another's lease renewals up for seconds, and leases of 3 s went round
//! for reasons no test had set up (CI, 2026-12-02: three tests failed in
//! one run; tokens reached 13 in one of them).

mod support;

use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use bson::{doc, Bson, DateTime as BsonDateTime, Document};
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use tally::core::money::Money;
use tally::core::rng::Rng;

use support::poll::{poll, wait_for};
use support::process::{
    env_on_own_server, first_to_log, instant, until_server_is_back, Env, Running, CATCH_UP,
    SETTLE_SECONDS,
};

const DIR: &str = "tally-faults";
const TAILING: &str = "Tailing transactions and pockets.";
const ACQUIRED: &str = "Acquired leadership.";
const STANDING_BY: &str = "Standing by";
const LOST: &str = "Lost leadership";
const HISTORY_LOST: &str = "Change stream history lost";
const RECOVERED: &str = "Recovered from lost history";
/// Mid-March: the in-memory window holds February and March; the daily
/// steps (23:59, 00:00 UTC) are hours away from this clock.
const NOON: &str = "2026-03-15T16:00:00Z";
/// Days the first start builds (`--initial-days`), unless a test says.
const WINDOW: u64 = 20;

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

/// `FAULTS_SEED` if set, else the time; printed so a failure can be rerun.
fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000)
                .unwrap_or(1)
        });
    eprintln!("{test}: FAULTS_SEED={seed}");
    seed
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn bdt(t: DateTime<Utc>) -> BsonDateTime {
    BsonDateTime::from_millis(t.timestamp_millis())
}

impl Env {
    /// `tally run --settle-seconds 2 --initial-days WINDOW --lease-ttl TTL`
    /// plus `extra`.
    fn run(&self, label: &str, ttl: u64, extra: &[&str]) -> Running {
        self.run_days(label, ttl, WINDOW, extra)
    }

    /// [`Env::run`] building `days` days on a first start.
    fn run_days(&self, label: &str, ttl: u64, days: u64, extra: &[&str]) -> Running {
        let (settle, ttl, days) = (
            SETTLE_SECONDS.to_string(),
            ttl.to_string(),
            days.to_string(),
        );
        let mut args = vec![
            "run",
            "--settle-seconds",
            &settle,
            "--initial-days",
            &days,
            "--lease-ttl",
            &ttl,
        ];
        args.extend_from_slice(extra);
        Running::spawn(self.command(&args), DIR, &self.name, label)
    }

    /// The background writer: `rate` API calls a second on the existing
    /// users' pockets, until SIGTERM.
    fn writer(&self, label: &str, rate: u32, seed: u64) -> Running {
        let (rate, seed) = (rate.to_string(), seed.to_string());
        let args = [
            "seed",
            "--users",
            "0",
            "--trickle",
            &rate,
            "--seed",
            &seed,
            "--quiet",
        ];
        Running::spawn(self.command(&args), DIR, &self.name, label)
    }

    /// `tally seed` of `users` × `per_user` transactions from `days` ago
    /// to today, the API's way.
    async fn seed(&self, users: u32, per_user: u32, days: i64, seed: u64) {
        let (users, per_user, seed) = (users.to_string(), per_user.to_string(), seed.to_string());
        let (from, to) = (self.day(-days).to_string(), self.day(0).to_string());
        let o = self
            .tally(&[
                "seed",
                "--users",
                &users,
                "--transactions-per-user",
                &per_user,
                "--from",
                &from,
                "--to",
                &to,
                "--seed",
                &seed,
            ])
            .await;
        assert!(
            o.status.success(),
            "seed: {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }

    async fn transaction_count(&self) -> u64 {
        self.db
            .collection::<Document>("transactions")
            .count_documents(doc! {})
            .await
            .expect("count")
    }

    /// (user, pocket) of every live pocket with an owner.
    /// Waits until the checkpoint holds a token other than `before` (one
    /// stored after a recovery, which saves none at first).
    async fn checkpoint_after(&self, before: &Option<Bson>) {
        wait_for("a checkpoint after the recovery", CATCH_UP, || async {
            let now = self.checkpoint_token().await;
            now.is_some() && now != *before
        })
        .await;
    }

    /// Waits until the stored checkpoint's token moves on; a failure shows
    /// the end of `leader`'s log (what it was doing instead).
    async fn checkpoint_moves(&self, what: &str, leader: &Running) {
        let token = self.checkpoint_token().await;
        poll(CATCH_UP, ms(100), async |late| {
            if self.checkpoint_token().await != token {
                return Some(());
            }
            assert!(
                !late,
                "{what}: not within {CATCH_UP:?}; {} logged last:\n{}",
                leader.label,
                leader.tail(40)
            );
            None
        })
        .await;
    }

    async fn pockets(&self) -> Vec<(ObjectId, ObjectId)> {
        self.all("pockets", doc! { "deleted_at": Bson::Null })
            .await
            .iter()
            .filter_map(|d| tally::core::source::decode_pocket(d).ok())
            .filter_map(|p| Some((p.user_id?, p.id)))
            .collect()
    }

    async fn rejects_of(&self, id: ObjectId) -> Vec<Document> {
        self.all(
            "tally_rejects",
            doc! { "collection": "transactions", "source_id": id },
        )
        .await
    }
}

/// A valid expense of `cents` from `pocket`, dated `date`. The targeted
/// writes use no pocket, so that they move no balance and leave no drift
/// (the background writer keeps its own balances: see `seed::trickle`).
fn expense(user: ObjectId, pocket: Option<ObjectId>, cents: u64, date: DateTime<Utc>) -> Document {
    let amount: Money = format!("{}.{:02}", cents / 100, cents % 100)
        .parse()
        .expect("money");
    doc! {
        "_id": ObjectId::new(),
        "user_id": user,
        "type": "expense",
        "amount": amount.to_bson(),
        "pocket_from_id": pocket.map_or(Bson::Null, Bson::ObjectId),
        "pocket_to_id": Bson::Null,
        "category_id": Bson::Null,
        "note": "faults",
        "date": bdt(date),
        "deleted_at": Bson::Null,
        "created_at": bdt(date),
        "updated_at": bdt(date),
    }
}

/// SIGTERM to the writer: it finishes its API call and exits 0.
async fn stop_writer(writer: &mut Running) {
    let status = writer.terminate().await;
    assert!(status.success(), "writer: {status}\n{}", writer.tail(20));
}

/// `n` valid expenses without a pocket spread over the users, dated in the
/// last `days` days, inserted in bulk batches of 250.
async fn bulk_expenses(
    env: &Env,
    pockets: &[(ObjectId, ObjectId)],
    n: usize,
    days: u64,
    rng: &mut Rng,
) -> Vec<ObjectId> {
    let coll = env.db.collection::<Document>("transactions");
    let mut ids = Vec::with_capacity(n);
    let mut batch = Vec::new();
    for i in 0..n {
        let (user, _) = pockets[rng.below(pockets.len() as u64) as usize];
        let day = env.day(-(rng.below(days) as i64));
        let at = env.at(day, rng.below(24) as u32, rng.below(60) as u32);
        let d = expense(user, None, 1 + rng.below(5_000), at);
        ids.push(d.get_object_id("_id").expect("_id"));
        batch.push(d);
        if batch.len() == 250 || i + 1 == n {
            let docs = std::mem::take(&mut batch);
            coll.insert_many(docs).await.expect("bulk insert");
        }
    }
    ids
}

// ---------------------------------------------------------------------------
// HTTP: the metrics of a `tally run` child
// ---------------------------------------------------------------------------

/// The port `tally run` logged for its HTTP endpoint (it was given port 0).
async fn http_port(run: &mut Running) -> u16 {
    run.wait_log("HTTP endpoint listening.", CATCH_UP).await;
    let log = run.log();
    let line = log
        .lines()
        .find(|l| l.contains("HTTP endpoint listening."))
        .expect("the line");
    line.split("addr=")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

/// `/metrics` of a `tally run` child (the body).
fn metrics(port: u16) -> Option<String> {
    support::http::get(port, "/metrics").map(|(_, body)| body)
}

/// The sum of a metric's samples over all label sets (`None`: absent).
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

// ---------------------------------------------------------------------------
// 1. kill -9 of the leader under load, ten rounds
// ---------------------------------------------------------------------------

/// Ten times: a random 1–4 s into a leader's life, with the writer going,
/// `kill -9` it and start its successor at once; the successor must lead
/// within TTL + 5 s (the dead leader's lease runs out after at most the
/// TTL; an open transaction it left behind must not hold the lease longer).
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_ten_rounds_each_restart_leads_within_ttl() {
    const TTL: u64 = 3;
    let seed = test_seed("kill_9_under_load");
    let mut rng = Rng::new(seed);
    let env = Env::own("flt_kill", "UTC", instant(NOON)).await;
    env.seed(30, 20, 15, seed).await;
    let mut run = env.run("r0", TTL, &[]);
    run.wait_log(TAILING, CATCH_UP).await;
    let before = env.transaction_count().await;
    let mut writer = env.writer("writer", 40, seed);
    let bound = Duration::from_secs(TTL + 5);
    for round in 1..=10 {
        let wait = 1000 + rng.below(3001);
        tokio::time::sleep(ms(wait)).await;
        assert!(writer.alive(), "writer died:\n{}", writer.tail(20));
        run.kill9();
        let killed = Instant::now();
        run = env.run(&format!("r{round}"), TTL, &[]);
        run.wait_log(ACQUIRED, bound).await;
        eprintln!(
            "round {round}: leader killed {wait} ms into its life; successor led after {:?}",
            killed.elapsed()
        );
    }
    run.wait_log(TAILING, CATCH_UP).await;
    stop_writer(&mut writer).await;
    let written = env.transaction_count().await - before;
    eprintln!("the writer made {written} API calls during the rounds");
    assert!(written > 0, "writes flowed");
    env.converged(WINDOW, &[&run]).await;
    assert_eq!(run.terminate().await.code(), Some(0), "{}", run.tail(20));
}

// ---------------------------------------------------------------------------
// 2. A standby takes over from a leader killed under load
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_over_from_a_leader_killed_under_load() {
    const TTL: u64 = 3;
    let seed = test_seed("standby_takes_over");
    let mut rng = Rng::new(seed);
    let env = Env::own("flt_standby", "UTC", instant(NOON)).await;
    env.seed(20, 15, 15, seed).await;
    let mut one = env.run("one", TTL, &[]);
    let mut two = env.run("two", TTL, &[]);
    let first = first_to_log(&mut [&mut one, &mut two], ACQUIRED, CATCH_UP).await;
    let (mut leader, mut standby) = if first == 0 { (one, two) } else { (two, one) };
    leader.wait_log(TAILING, CATCH_UP).await;
    standby.wait_log(STANDING_BY, CATCH_UP).await;
    let mut writer = env.writer("writer", 40, seed);
    env.checkpoint_moves("a checkpoint under load", &leader)
        .await;
    tokio::time::sleep(ms(rng.below(2000))).await;
    leader.kill9();
    let killed = Instant::now();
    standby
        .wait_log(ACQUIRED, Duration::from_secs(TTL + 5))
        .await;
    eprintln!(
        "standby led {:?} after kill -9 (TTL {TTL} s)",
        killed.elapsed()
    );
    standby.wait_log(TAILING, CATCH_UP).await;
    // The new leader follows the writer for a while before it stops.
    env.checkpoint_moves("a checkpoint by the new leader", &standby)
        .await;
    stop_writer(&mut writer).await;
    env.converged(WINDOW, &[&standby]).await;
    assert_eq!(
        standby.terminate().await.code(),
        Some(0),
        "{}",
        standby.tail(20)
    );
}

/// A backlog whose flush outlasts the lease, met by two instances started
/// together with a 3 s lease (the first thing a restarted pair does after
/// downtime). A fenced transaction holds the lease document, so the
/// holder's own renewals wait behind it: when one flush was one
/// transaction, the lease looked expired in the middle of it, the other
/// instance ended the holder's session (aborting the flush) and took over,
/// only to meet the same long flush — the lease went round and the
/// checkpoint never moved (CI, `sigterm_to_...` round 2). Transactions now
/// end within a sixth of the TTL: one instance works the backlog off, with
/// at most a takeover or two, and everything converges.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_longer_than_the_lease_is_worked_off_with_a_standby_waiting() {
    const TTL: u64 = 3;
    let seed = test_seed("backlog");
    let env = Env::own("flt_backlog", "UTC", instant(NOON)).await;
    let spent = backlog_of_expenses(&env, seed, TTL).await;
    let mut one = env.run("one", TTL, &[]);
    let mut two = env.run("two", TTL, &[]);
    let leader = first_to_log(&mut [&mut one, &mut two], ACQUIRED, CATCH_UP).await;
    let token = env.checkpoint_token().await;
    let began = Instant::now();
    poll(CATCH_UP, ms(200), async |late| {
        if env.checkpoint_token().await != token {
            return Some(());
        }
        let acquisitions = [&one, &two].map(|r| r.log().matches(ACQUIRED).count());
        assert!(
            !late,
            "no checkpoint {CATCH_UP:?} after the pair started (acquisitions {acquisitions:?}):\n\
             one:\n{}\ntwo:\n{}",
            one.tail(15),
            two.tail(15)
        );
        None
    })
    .await;
    let acquisitions: usize = [&one, &two]
        .iter()
        .map(|r| r.log().matches(ACQUIRED).count())
        .sum();
    eprintln!(
        "backlog of {spent} pockets: a checkpoint {:?} after the start, {acquisitions} acquisitions (first: {})",
        began.elapsed(),
        ["one", "two"][leader]
    );
    env.converged(WINDOW, &[&one, &two]).await;
    // Before the fix: the lease changed hands again and again (tokens 9,
    // 10, 11... in one run) and the checkpoint took 47 s. One loss is
    // allowed for a machine slowed by the other tests.
    let losses: usize = [&one, &two]
        .iter()
        .map(|r| r.log().matches(LOST).count())
        .sum();
    assert!(
        losses <= 1,
        "the lease was lost {losses} times while the backlog was worked off:\none:\n{}\ntwo:\n{}",
        one.tail(15),
        two.tail(15)
    );
    for r in [&mut one, &mut two] {
        assert_eq!(r.terminate().await.code(), Some(0), "{}", r.tail(20));
    }
}

/// Seeds 80 users, builds their window with an instance that then stops,
/// and, while nothing runs, has every pocket pay an expense dated the
/// window's first day, so every snapshot of the window changes: a backlog
/// for the next instances. The number of expenses.
async fn backlog_of_expenses(env: &Env, seed: u64, ttl: u64) -> usize {
    env.seed(80, 10, 15, seed).await;
    let pockets = env.pockets().await;
    let mut first = env.run("first", ttl, &[]);
    first.wait_log(TAILING, CATCH_UP).await;
    assert_eq!(
        first.terminate().await.code(),
        Some(0),
        "{}",
        first.tail(20)
    );
    // (The seed garbles a few balances on purpose: those pockets stay.)
    let at = env.at(env.day(-(WINDOW as i64) + 1), 9, 30);
    let mut spent = 0;
    for d in env.all("pockets", doc! { "deleted_at": Bson::Null }).await {
        let valid = d.get("balance").and_then(|b| Money::from_bson(b).ok());
        if let (Some(_), Ok(id)) = (valid, d.get_object_id("_id")) {
            if let Some(&(user, pocket)) = pockets.iter().find(|(_, p)| *p == id) {
                spend(env, user, pocket, 1_999, at).await;
                spent += 1;
            }
        }
    }
    spent
}

/// The backlog above, worked off by two instances whose holder stalls
/// longer than the lease again and again, at random moments (SIGSTOP, as a
/// machine or server too busy to take its renewals in time stalls it):
/// the standby takes over each time, from the stored checkpoint and
/// documents as the stalled holder left them, and the holder, resumed,
/// finds its lease gone and stands by. Everything converges.
#[tokio::test(flavor = "multi_thread")]
async fn a_holder_stalled_again_and_again_while_a_backlog_is_worked_off_converges() {
    const TTL: u64 = 3;
    const STALLS: usize = 4;
    let seed = test_seed("stalled_holder");
    let mut rng = Rng::new(seed);
    let env = Env::own("flt_stalls", "UTC", instant(NOON)).await;
    backlog_of_expenses(&env, seed, TTL).await;
    let mut one = env.run("one", TTL, &[]);
    let mut two = env.run("two", TTL, &[]);
    first_to_log(&mut [&mut one, &mut two], ACQUIRED, CATCH_UP).await;
    for _ in 0..STALLS {
        tokio::time::sleep(ms(500 + rng.below(4_000))).await;
        let lease = env
            .all("tally_lease", doc! { "_id": "tally" })
            .await
            .pop()
            .expect("a lease");
        let owner = lease.get_str("owner").expect("owner").to_owned();
        let Some(holder) = [&one, &two]
            .into_iter()
            .find(|r| r.owner().as_deref() == Some(owner.as_str()))
        else {
            continue;
        };
        holder.signal("STOP");
        tokio::time::sleep(ms(TTL * 1000 + 2_000 + rng.below(2_000))).await;
        holder.signal("CONT");
    }
    env.converged(WINDOW, &[&one, &two]).await;
    let acquisitions: usize = [&one, &two]
        .iter()
        .map(|r| r.log().matches(ACQUIRED).count())
        .sum();
    eprintln!("stalled_holder: {acquisitions} acquisitions in {STALLS} stalls");
    assert!(
        acquisitions > STALLS / 2,
        "the lease changed hands {acquisitions} times in {STALLS} stalls: the test tested little"
    );
    for r in [&mut one, &mut two] {
        assert_eq!(r.terminate().await.code(), Some(0), "{}", r.tail(20));
    }
}

// ---------------------------------------------------------------------------
// 3. SIGTERM while the dead leader still holds the lease
// ---------------------------------------------------------------------------

/// Three rounds: the leader dies under load at a random moment. Its
/// successor, started at once, gets SIGTERM 300 ms later (the dead
/// leader's lease still runs); then, once that lease has expired, the
/// standby that was waiting all along and a second successor get SIGTERM
/// while they try to take over (blocked, if the dead leader left a
/// transaction open on the lease). Each exits 0 within 10 s, whether it got
/// the lease by then or not; the log says which.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_to_an_instance_waiting_on_a_dead_leader_exits_within_10_s() {
    const TTL: u64 = 3;
    let seed = test_seed("sigterm_waiting");
    let mut rng = Rng::new(seed);
    let env = Env::own("flt_term", "UTC", instant(NOON)).await;
    env.seed(20, 15, 15, seed).await;
    let pockets = env.pockets().await;
    let mut leader = env.run("leader0", TTL, &[]);
    leader.wait_log(TAILING, CATCH_UP).await;
    let mut writer = env.writer("writer", 40, seed);
    for round in 1..=3 {
        let mut standby = env.run(&format!("standby{round}"), TTL, &[]);
        standby.wait_log(STANDING_BY, CATCH_UP).await;
        env.checkpoint_moves("a checkpoint under load", &leader)
            .await;
        // A burst makes the next flush long: the kill likely lands inside
        // its fenced transaction, which holds the lease document.
        bulk_expenses(&env, &pockets, 300, 12, &mut rng).await;
        tokio::time::sleep(ms(100 + rng.below(500))).await;
        leader.kill9();

        // Right after it starts.
        let mut successor = env.run(&format!("successor{round}"), TTL, &[]);
        tokio::time::sleep(ms(300)).await;
        sigterm_exits_0(&mut [&mut successor]).await;

        // Once the dead leader's lease has expired (the server runs on
        // this machine's clock) and the waiting instances have polled since.
        let expires = env.lease_expiry().await;
        wait_for("the dead leader's lease expired", CATCH_UP, || async {
            BsonDateTime::now() > expires
        })
        .await;
        let mut late = env.run(&format!("late{round}"), TTL, &[]);
        tokio::time::sleep(Duration::from_millis(TTL * 1000 / 3 + 700)).await;
        sigterm_exits_0(&mut [&mut standby, &mut late]).await;

        // Someone must lead again.
        leader = env.run(&format!("leader{round}"), TTL, &[]);
        leader.wait_log(ACQUIRED, Duration::from_secs(90)).await;
        leader.wait_log(TAILING, CATCH_UP).await;
    }
    stop_writer(&mut writer).await;
    env.converged(WINDOW, &[&leader]).await;
    assert_eq!(
        leader.terminate().await.code(),
        Some(0),
        "{}",
        leader.tail(20)
    );
}

/// SIGTERM to each of `runs` at once: every one exits 0 within 10 s.
async fn sigterm_exits_0(runs: &mut [&mut Running]) {
    let signalled = Instant::now();
    for r in runs.iter() {
        r.signal("TERM");
    }
    let limit = Duration::from_secs(10);
    let mut failures = Vec::new();
    for r in runs.iter_mut() {
        let led = r.log().contains(ACQUIRED);
        let status = r.wait_exit(limit.saturating_sub(signalled.elapsed())).await;
        eprintln!(
            "{} (leader at the signal: {led}): {status:?}, {:?} after SIGTERM",
            r.label,
            signalled.elapsed()
        );
        if status.and_then(|s| s.code()) != Some(0) {
            failures.push(format!(
                "{} (leader at the signal: {led}) after SIGTERM: {status:?} within 10 s\n{}",
                r.label,
                r.tail(30)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

impl Env {
    async fn lease_expiry(&self) -> BsonDateTime {
        let lease = self
            .db
            .collection::<Document>("tally_lease")
            .find_one(doc! { "_id": "tally" })
            .await
            .expect("lease")
            .expect("a lease document");
        *lease.get_datetime("expires_at").expect("expires_at")
    }
}

// ---------------------------------------------------------------------------
// 4. A reject on a quiet stream
// ---------------------------------------------------------------------------

/// Nothing else is written: the one invalid insert must reach
/// `tally_rejects` within 2 s, and survive kill -9 and restart. A second
/// invalid insert, with the leader killed once the checkpoint has moved
/// past it (or its record is there), must not be skipped either.
#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_insert_on_a_quiet_stream_is_in_tally_rejects_within_2_s() {
    const TTL: u64 = 3;
    let seed = test_seed("quiet_reject");
    let env = Env::own("flt_reject", "UTC", instant(NOON)).await;
    env.seed(5, 10, 15, seed).await;
    let mut run = env.run("first", TTL, &[]);
    run.wait_log(TAILING, CATCH_UP).await;
    env.converged(WINDOW, &[&run]).await;
    let (user, pocket) = env.pockets().await[0];
    let coll = env.db.collection::<Document>("transactions");
    let garbled = |id: ObjectId| {
        let mut d = expense(user, Some(pocket), 4200, env.clock.now());
        d.insert("_id", id);
        d.insert("amount", "twelve");
        d
    };

    let bad = ObjectId::new();
    coll.insert_one(garbled(bad)).await.expect("insert");
    let inserted = Instant::now();
    poll(CATCH_UP, ms(20), async |late| {
        if !env.rejects_of(bad).await.is_empty() {
            return Some(());
        }
        assert!(run.alive(), "{}", run.tail(30));
        assert!(
            !late,
            "no reject record {CATCH_UP:?} after the insert:\n{}",
            run.tail(30)
        );
        None
    })
    .await;
    let took = inserted.elapsed();
    eprintln!("reject record {took:?} after the insert");
    run.kill9();
    assert!(
        took <= Duration::from_secs(2),
        "the reject record appeared {took:?} after the insert on a quiet stream (bound 2 s)"
    );
    let mut run = env.run("after-kill", TTL, &[]);
    run.wait_log(TAILING, CATCH_UP).await;
    let records = env.rejects_of(bad).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].get_str("reason"), Ok("invalid_amount"));

    // The checkpoint must not move past an event whose verdict is unwritten.
    let token = env.checkpoint_token().await;
    let second = ObjectId::new();
    coll.insert_one(garbled(second)).await.expect("insert");
    wait_for(
        "the checkpoint moved or the record appeared",
        CATCH_UP,
        || async {
            env.checkpoint_token().await != token || !env.rejects_of(second).await.is_empty()
        },
    )
    .await;
    run.kill9();
    let mut run = env.run("after-second-kill", TTL, &[]);
    run.wait_log(TAILING, CATCH_UP).await;
    poll(CATCH_UP, ms(100), async |late| {
        if !env.rejects_of(second).await.is_empty() {
            return Some(());
        }
        assert!(
            !late,
            "the second invalid insert was never recorded: the checkpoint skipped it\n{}",
            run.tail(30)
        );
        None
    })
    .await;
    assert_eq!(env.rejects_of(bad).await.len(), 1);
    env.converged(WINDOW, &[&run]).await;
    assert_eq!(run.terminate().await.code(), Some(0), "{}", run.tail(20));
}

// ---------------------------------------------------------------------------
// 5. A server error on commit
// ---------------------------------------------------------------------------

/// `commitTransaction` answers InternalError (code 1, no retry label) five
/// times while writes flow, as SecantusDB does under write conflicts: tally
/// counts the failures, retries, never exits, and converges.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_error_on_commit_is_retried_not_fatal() {
    const TTL: u64 = 3;
    const TIMES: i32 = 5;
    let seed = test_seed("commit_error");
    let server = support::start_server(&["--enable-test-commands"], None);
    let env = Env::new("flt_commit", server.uri(), "UTC", instant(NOON)).await;
    env.seed(20, 15, 15, seed).await;
    let mut run = env.run("run", TTL, &[]);
    let port = http_port(&mut run).await;
    run.wait_log(TAILING, CATCH_UP).await;
    let mut writer = env.writer("writer", 30, seed);
    env.checkpoint_moves("a checkpoint under load", &run).await;

    let admin = env.client.database("admin");
    admin
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": TIMES },
            "data": { "failCommands": ["commitTransaction"], "errorCode": 1 },
        })
        .await
        .expect("configureFailPoint (server started with --enable-test-commands)");
    let armed = Instant::now();
    let failures = poll(CATCH_UP, ms(200), async |late| {
        assert!(
            run.alive(),
            "tally run exited on a commit error: {:?}\n{}",
            run.wait_exit(ms(0)).await,
            run.tail(30)
        );
        let text = metrics(port).unwrap_or_default();
        if let Some(n) = metric_sum(&text, "tally_write_failures_total").filter(|n| *n > 0.0) {
            return Some(n);
        }
        assert!(
            !late,
            "tally_write_failures_total not > 0 within {CATCH_UP:?} of arming the fail point \
             (present: {:?}):\n{}",
            metric_sum(&text, "tally_write_failures_total"),
            run.tail(30)
        );
        None
    })
    .await;
    eprintln!(
        "tally_write_failures_total = {failures} {:?} after arming",
        armed.elapsed()
    );
    // It goes on leading and checkpointing under the writer.
    env.checkpoint_moves("a checkpoint after the failures", &run)
        .await;
    assert!(run.alive(), "{}", run.tail(30));
    stop_writer(&mut writer).await;
    admin
        .run_command(doc! { "configureFailPoint": "failCommand", "mode": "off" })
        .await
        .expect("fail point off");
    env.converged(WINDOW, &[&run]).await;
    assert!(run.alive(), "{}", run.tail(30));
    assert_eq!(run.terminate().await.code(), Some(0), "{}", run.tail(20));
}

// ---------------------------------------------------------------------------
// 6 and 7. History lost under a paused and under a running leader
// ---------------------------------------------------------------------------

/// Waits up to 60 s for `run` to log a history-lost recovery or exit.
/// `true`: it recovered (and is running); `false`: it exited.
async fn recovered_or_exited(run: &mut Running) -> bool {
    poll(Duration::from_secs(60), ms(100), async |late| {
        let log = run.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains(HISTORY_LOST) || l.contains(RECOVERED))
        {
            eprintln!("{} recovered: {}", run.label, &line[..line.len().min(160)]);
            return Some(true);
        }
        if let Some(status) = run.wait_exit(ms(0)).await {
            eprintln!("{} exited {status}:\n{}", run.label, run.tail(15));
            return Some(false);
        }
        assert!(
            !late,
            "{} neither recovered from lost history nor exited within 60 s:\n{}",
            run.label,
            run.tail(30)
        );
        None
    })
    .await
}

/// Replaces the writer if the server restart killed it.
fn writer_alive(env: &Env, writer: &mut Running, seed: u64, n: &mut u32) {
    if !writer.alive() {
        eprintln!("writer stopped with the server:\n{}", writer.tail(5));
        *n += 1;
        *writer = env.writer(&format!("writer{n}"), 20, seed + u64::from(*n));
    }
}

/// An own server whose history keeps 500 entries (pruned every 1,000
/// writes), seeded; a leader `label` tailing and the API's writer running;
/// returned once a checkpoint was stored under that load.
///
/// SecantusDB differs from `mongod` twice here (ARCHITECTURE.md): a cursor
/// whose unread entries are pruned goes on silently after the gap, and a
/// stream started at an operation time older than the history starts at
/// its oldest entry — `mongod` fails both with 286, which tally recovers
/// from. Events can then vanish without an error, which no service can
/// notice, so the tests keep source writes out of the moments the stream
/// may lag by more than the kept history: the writer stops before the
/// burst that loses the history and starts again once tally has stored a
/// checkpoint after its recovery (on `mongod` neither precaution matters).
async fn small_history(
    prefix: &str,
    label: &str,
    ttl: u64,
    seed: u64,
) -> (
    support::Server,
    std::path::PathBuf,
    Env,
    Vec<(ObjectId, ObjectId)>,
    Running,
    Running,
) {
    let (server, dir, env) = env_on_own_server(prefix, &["--oplog-max-entries", "500"], NOON).await;
    env.seed(15, 10, 15, seed).await;
    let pockets = env.pockets().await;
    let mut leader = env.run(label, ttl, &[]);
    leader.wait_log(TAILING, CATCH_UP).await;
    let writer = env.writer("writer", 20, seed);
    env.checkpoint_moves("a checkpoint under load", &leader)
        .await;
    (server, dir, env, pockets, leader, writer)
}

/// The leader is paused (SIGSTOP); meanwhile more than 1,000 writes prune
/// the history past its token and the server restarts. Resumed (SIGCONT),
/// it must recover from the lost history or exit within 60 s; if it
/// exited, a new instance takes over. Then a standby joins and writes
/// flow again.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_paused_while_history_moves_on_and_the_server_restarts_recovers_or_exits() {
    const TTL: u64 = 3;
    let seed = test_seed("paused_history");
    let mut rng = Rng::new(seed);
    let (mut server, dir, env, pockets, mut leader, mut writer) =
        small_history("flt_pause", "leader", TTL, seed).await;
    let mut writers = 0;

    // The writer stops first (see `small_history`).
    stop_writer(&mut writer).await;
    let before_loss = env.checkpoint_token().await;
    leader.signal("STOP");
    bulk_expenses(&env, &pockets, 1_500, 10, &mut rng).await;
    server.restart();
    until_server_is_back(&env).await;
    leader.signal("CONT");
    let mut run = if recovered_or_exited(&mut leader).await {
        leader.wait_log(RECOVERED, CATCH_UP).await;
        leader
    } else {
        let mut next = env.run("next", TTL, &[]);
        next.wait_log(TAILING, CATCH_UP).await;
        next
    };
    eprintln!("leading now: {}", run.label);
    env.checkpoint_after(&before_loss).await;

    // A standby joins; more writes to the same users.
    let mut standby = env.run("standby", TTL, &[]);
    standby.wait_log(STANDING_BY, CATCH_UP).await;
    let written = env.transaction_count().await;
    let mut writer = env.writer("writer-after", 20, seed + 1);
    // Writing (and so past installing its SIGTERM handler) before the
    // burst and the stop.
    wait_for("the writer writes", CATCH_UP, || async {
        env.transaction_count().await > written
    })
    .await;
    writer_alive(&env, &mut writer, seed, &mut writers);
    bulk_expenses(&env, &pockets, 100, 10, &mut rng).await;
    stop_writer(&mut writer).await;
    env.converged(WINDOW, &[&run, &standby]).await;
    assert!(run.alive(), "{}", run.tail(20));
    assert_eq!(run.terminate().await.code(), Some(0), "{}", run.tail(20));
    assert_eq!(
        standby.terminate().await.code(),
        Some(0),
        "{}",
        standby.tail(20)
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A running leader falls behind a burst of 3,000 inserts (paused while
/// they prune the history to its last 500 entries) and the server restarts
/// before it catches up: the resumed stream has lost its history. After
/// the recovery, edits and deletes of the same users' transactions (the
/// burst's among them) must converge: the in-memory window must not be
/// stale.
#[tokio::test(flavor = "multi_thread")]
async fn history_lost_while_running_then_more_writes_to_the_same_users_converge() {
    const TTL: u64 = 3;
    let seed = test_seed("running_history");
    let mut rng = Rng::new(seed);
    let (mut server, dir, env, pockets, mut run, mut writer) =
        small_history("flt_lost", "run", TTL, seed).await;
    let mut writers = 0;

    // The writer stops first (see `small_history`); tally, paused while
    // the burst prunes the history past its token, meets the loss when it
    // reads again.
    stop_writer(&mut writer).await;
    let before_loss = env.checkpoint_token().await;
    run.signal("STOP");
    let burst = bulk_expenses(&env, &pockets, 3_000, 10, &mut rng).await;
    server.restart();
    until_server_is_back(&env).await;
    run.signal("CONT");
    poll(Duration::from_secs(60), ms(100), async |late| {
        if run.log().contains(HISTORY_LOST) {
            return Some(());
        }
        assert!(
            run.alive(),
            "tally run exited after the restart:\n{}",
            run.tail(30)
        );
        assert!(
            !late,
            "no history loss within 60 s of the restart: tally kept up with the burst \
             (on SecantusDB its open cursor then skips the pruned entries silently), \
             so this run did not test what it means to:\n{}",
            run.tail(30)
        );
        None
    })
    .await;
    run.wait_log(RECOVERED, CATCH_UP).await;
    // Writes again once tally streams at the head (see `small_history`).
    env.checkpoint_after(&before_loss).await;
    let mut writer = env.writer("writer-after", 20, seed + 1);

    // Edits of the same users: amounts and dates of burst transactions and
    // of older ones, and hard deletes.
    let coll = env.db.collection::<Document>("transactions");
    let older: Vec<ObjectId> = env
        .all("transactions", doc! { "note": { "$ne": "faults" } })
        .await
        .iter()
        .filter_map(|d| d.get_object_id("_id").ok())
        .collect();
    // The API's transactions (with pockets) only move in time, so that no
    // balance drifts; the burst's (no pocket) change amount or go.
    for i in 0..60u64 {
        let edit_older = i % 3 == 0;
        let id = if edit_older {
            older[rng.below(older.len() as u64) as usize]
        } else {
            burst[rng.below(burst.len() as u64) as usize]
        };
        let cents = 1 + rng.below(9_000);
        let amount: Money = format!("{}.{:02}", cents / 100, cents % 100)
            .parse()
            .expect("money");
        let set = if edit_older || i % 4 == 1 {
            let day = env.day(-(rng.below(12) as i64));
            doc! { "date": bdt(env.at(day, 12, 0)), "updated_at": bdt(env.clock.now()) }
        } else {
            doc! { "amount": amount.to_bson(), "updated_at": bdt(env.clock.now()) }
        };
        if !edit_older && i % 5 == 4 {
            coll.delete_one(doc! { "_id": id }).await.expect("delete");
        } else {
            coll.update_one(doc! { "_id": id }, doc! { "$set": set })
                .await
                .expect("edit");
        }
        tokio::time::sleep(ms(50)).await;
    }
    writer_alive(&env, &mut writer, seed, &mut writers);
    stop_writer(&mut writer).await;
    env.converged(WINDOW, &[&run]).await;
    assert!(run.alive(), "{}", run.tail(20));
    assert_eq!(run.terminate().await.code(), Some(0), "{}", run.tail(20));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// 8. Hard deletes before the window, without pre-images
// ---------------------------------------------------------------------------

/// The first start builds 90 days; the in-memory window holds February
/// and March. Transactions of December and January (inside the managed
/// range) and a few older than it are hard-deleted while writes flow, and
/// tally follows without pre-images: it must locate each through the
/// stored reports, or recompute.
#[tokio::test(flavor = "multi_thread")]
async fn hard_deletes_older_than_the_window_without_pre_images_converge() {
    const TTL: u64 = 3;
    const DAYS: u64 = 90;
    let seed = test_seed("old_hard_deletes");
    let mut rng = Rng::new(seed);
    let env = Env::own("flt_nopre", "UTC", instant(NOON)).await;
    env.seed(20, 25, 110, seed).await;
    let mut run = env.run_days("run", TTL, DAYS, &["--no-pre-images"]);
    run.wait_log(TAILING, CATCH_UP).await;
    let mut writer = env.writer("writer", 30, seed);

    let window_from: NaiveDate = "2026-02-01".parse().expect("date");
    let managed_from = env.day(-(DAYS as i64));
    let old: Vec<(ObjectId, DateTime<Utc>)> = env
        .db
        .collection::<Document>("transactions")
        .find(doc! { "date": { "$lt": bdt(env.at(window_from, 0, 0)) } })
        .await
        .expect("find")
        .try_collect::<Vec<Document>>()
        .await
        .expect("cursor")
        .iter()
        .filter_map(|d| Some((d.get_object_id("_id").ok()?, *d.get_datetime("date").ok()?)))
        .filter_map(|(id, t)| Some((id, DateTime::from_timestamp_millis(t.timestamp_millis())?)))
        .collect();
    let (inside, before): (Vec<_>, Vec<_>) = old
        .iter()
        .partition(|(_, t)| env.cal.day_of(*t) >= managed_from);
    assert!(
        inside.len() >= 20 && before.len() >= 3,
        "{} inside, {} before",
        inside.len(),
        before.len()
    );
    let mut victims: Vec<ObjectId> = Vec::new();
    while victims.len() < 20 {
        let (id, _) = inside[rng.below(inside.len() as u64) as usize];
        if !victims.contains(&id) {
            victims.push(id);
        }
    }
    victims.extend(before.iter().take(3).map(|(id, _)| *id));
    let coll = env.db.collection::<Document>("transactions");
    for id in &victims {
        coll.delete_one(doc! { "_id": id }).await.expect("delete");
        tokio::time::sleep(ms(100 + rng.below(300))).await;
    }
    assert!(run.alive(), "{}", run.tail(20));
    stop_writer(&mut writer).await;
    env.converged(DAYS, &[&run]).await;
    assert!(run.alive(), "{}", run.tail(20));
    assert_eq!(run.terminate().await.code(), Some(0), "{}", run.tail(20));
}

// ---------------------------------------------------------------------------
// 9. Crashes and failures anywhere
// ---------------------------------------------------------------------------

/// Round after round, `tally run` works under `TALLY_INJECT` (src/mongo/inject.rs):
/// at each named point between its awaits — inside fenced transactions,
/// between a flush's writes and its checkpoint, within a start — a seeded
/// draw crashes it (abort, as `kill -9`, an open transaction left behind)
/// or fails the operation there. Writes flow throughout, invalid ones
/// among them. A crashed instance is replaced at once; one still alive
/// after a few seconds is killed. Then an instance without injection must
/// lead, and the end state must equal the from-scratch computation, with
/// every invalid document's reject record.
#[tokio::test(flavor = "multi_thread")]
async fn crashes_and_failures_at_injected_points_under_load_converge() {
    const TTL: u64 = 3;
    let rounds: u64 = std::env::var("FAULTS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let seed = test_seed("inject");
    let mut rng = Rng::new(seed);
    let env = Env::own("flt_inject", "UTC", instant(NOON)).await;
    env.seed(20, 10, 15, seed).await;
    let (user, pocket) = env.pockets().await[0];
    let coll = env.db.collection::<Document>("transactions");
    let mut writer = env.writer("writer", 30, seed);
    let mut invalid = Vec::new();
    let (mut crashes, mut failures) = (Vec::new(), 0);
    for round in 0..rounds {
        let spec = format!("seed={},crash=10,fail=25", seed * 1000 + round);
        let mut command = env.command(&[
            "run",
            "--settle-seconds",
            &SETTLE_SECONDS.to_string(),
            "--initial-days",
            &WINDOW.to_string(),
            "--lease-ttl",
            &TTL.to_string(),
        ]);
        command.env("TALLY_INJECT", &spec);
        let label = format!("r{round}");
        let mut run = Running::spawn(command, DIR, &env.name, &label);
        // It leads within the TTL (plus the first poll) of the last
        // instance's death, unless it crashed on the way there.
        poll(Duration::from_secs(TTL + 10), ms(50), async |late| {
            if !run.alive() || run.log().contains(ACQUIRED) {
                return Some(());
            }
            assert!(!late, "{label} did not lead:\n{}", run.tail(20));
            None
        })
        .await;
        let id = ObjectId::new();
        let mut bad = expense(user, Some(pocket), 1 + rng.below(9_000), env.clock.now());
        bad.insert("_id", id);
        bad.insert("amount", "twelve");
        coll.insert_one(bad).await.expect("an invalid insert");
        invalid.push(id);
        // A while under the writer, unless it crashes first.
        run.wait_exit(ms(2_000 + rng.below(4_000))).await;
        let log = run.log();
        failures += log.matches("injected failure at").count();
        if run.alive() {
            run.kill9();
        } else {
            let point = log
                .lines()
                .find_map(|l| l.strip_prefix("Injected crash at "))
                .unwrap_or("?")
                .trim_end_matches('.')
                .to_owned();
            crashes.push(point);
        }
    }
    eprintln!("{rounds} rounds: crashed at {crashes:?}; {failures} injected failures retried");
    assert!(
        crashes.len() + failures > 0,
        "the injection neither crashed nor failed anything: the test tested nothing"
    );
    let mut last = env.run("last", TTL, &[]);
    last.wait_log(TAILING, CATCH_UP).await;
    stop_writer(&mut writer).await;
    env.converged(WINDOW, &[&last]).await;
    for id in &invalid {
        let records = env.rejects_of(*id).await;
        assert_eq!(records.len(), 1, "reject record of {id}: {records:?}");
    }
    assert_eq!(last.terminate().await.code(), Some(0), "{}", last.tail(20));
}

// ---------------------------------------------------------------------------
// 10. A step due while the stream lags
// ---------------------------------------------------------------------------

/// An expense of `cents` from `pocket` dated `at`, then its balance write,
/// as the API does; the expense's id.
async fn spend(
    env: &Env,
    user: ObjectId,
    pocket: ObjectId,
    cents: u64,
    at: DateTime<Utc>,
) -> ObjectId {
    let spent: Money = format!("{}.{:02}", cents / 100, cents % 100)
        .parse()
        .expect("money");
    let tx = expense(user, Some(pocket), cents, at);
    let id = tx.get_object_id("_id").expect("_id");
    env.db
        .collection::<Document>("transactions")
        .insert_one(tx)
        .await
        .expect("insert");
    let pockets = env.db.collection::<Document>("pockets");
    let stored = pockets
        .find_one(doc! { "_id": pocket })
        .await
        .expect("pocket")
        .expect("the pocket exists");
    let balance = Money::from_bson(stored.get("balance").expect("balance")).expect("a balance");
    pockets
        .update_one(
            doc! { "_id": pocket },
            doc! { "$set": { "balance": (balance - spent).to_bson() } },
        )
        .await
        .expect("balance write");
    id
}

/// The leader is paused across 23:59; a burst of the day's transactions
/// and a second expense of a user whose report exists are written before
/// 23:59 while it cannot read them. Resumed, its stream lags behind the
/// due time by more than one turn of its loop: the day's reports must be finalized with that transaction
/// in them — the step waits until the stream has delivered what was
/// written before it was due — not finalized without it and restated a
/// moment later.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_due_while_the_stream_lags_waits_for_the_events_before_it() {
    const TTL: u64 = 3;
    let seed = test_seed("lagging_step");
    let env = Env::own("flt_lag", "UTC", instant("2026-03-15T23:58:30Z")).await;
    env.seed(5, 5, 10, seed).await;
    let (user, pocket) = env.pockets().await[0];
    let mut run = env.run("run", TTL, &[]);
    run.wait_log(TAILING, CATCH_UP).await;
    let due = instant("2026-03-15T23:59:00Z");
    assert!(
        env.clock.now() < due - chrono::Duration::seconds(2),
        "the start took until {}: too late for this test's 23:59",
        env.clock.now()
    );

    // A first expense of the day: its report exists, not final, before
    // the pause — a step that does not wait would close it without the
    // second and restate it a moment later.
    let first = spend(&env, user, pocket, 1_234, env.clock.now()).await;
    let day = doc! { "user_id": user, "report_date": bdt(instant("2026-03-15T00:00:00Z")) };
    wait_for(
        "the day's report with the first expense",
        CATCH_UP,
        || async {
            env.all("daily_financial_reports", day.clone())
                .await
                .first()
                .is_some_and(|r| format!("{r:?}").contains(&first.to_hex()))
        },
    )
    .await;

    // Paused, the leader falls behind: a burst of the day's expenses of
    // all users, then a second expense of this user, all before 23:59.
    run.signal("STOP");
    let pockets = env.pockets().await;
    bulk_expenses(&env, &pockets, 2_500, 1, &mut Rng::new(seed)).await;
    let id = spend(&env, user, pocket, 4_321, env.clock.now()).await;
    assert!(
        env.clock.now() < due,
        "the writes took until {}: too late for this test's 23:59",
        env.clock.now()
    );
    while env.clock.now() < due + chrono::Duration::seconds(2) {
        tokio::time::sleep(ms(100)).await;
    }
    run.signal("CONT");
    run.wait_log("kind=\"reports\" period=2026-03-15", CATCH_UP)
        .await;
    env.converged(WINDOW, &[&run]).await;
    let report = env.all("daily_financial_reports", day).await;
    let report = report.first().expect("the day's report");
    assert_eq!(report.get_bool("is_final"), Ok(true), "{report:?}");
    assert!(
        format!("{report:?}").contains(&id.to_hex()),
        "the transaction written before 23:59 is in the final report: {report:?}"
    );
    assert_eq!(
        report.get_i64("restatements").unwrap_or(0),
        0,
        "finalized with it, not restated after: {report:?}"
    );
    assert_eq!(run.terminate().await.code(), Some(0), "{}", run.tail(20));
}
