//! The lease fence's cost on the live path: small flushes (5 new reports
//! each, inserts as most of a live flush's writes are) and checkpoint
//! saves, unfenced and fenced by a held lease (`src/mongo/lease.rs`),
//! against the same server in one run. Passes alternate (unfenced, fenced,
//! unfenced, fenced) so that a server warming up or slowing down shows as
//! a difference between passes of the same kind.
//!
//! Run: `cargo bench --bench fence` (200 rounds per pass;
//! `TALLY_BENCH_ROUNDS` changes it). Prints one line per pass and the
//! fence's cost per flush and per save (fenced minus unfenced, averaged
//! over the passes). Under `cargo test` it runs one pass of each with 10
//! rounds as a smoke test. The checks of the fence itself are in
//! `tests/ha.rs`.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use chrono::Utc;
use mongodb::Client;
use tally::mongo::lease::{self, Fence};
use tally::mongo::state::{self, Checkpoint};
use tally::mongo::{bulk, connect};

use support::writes::report_write;

/// Mean time of one flush of 5 new reports and of one checkpoint save,
/// over `rounds` of each.
async fn pass(
    db: &mongodb::Database,
    fence: Option<&Fence>,
    rounds: usize,
) -> (Duration, Duration) {
    let started = Instant::now();
    for i in 0..rounds {
        let writes = (0..5)
            .map(|_| report_write(ObjectId::new(), "2026-01-05", i as i64))
            .collect();
        bulk::execute(db, writes, fence).await.expect("execute");
    }
    let flush = started.elapsed() / rounds as u32;
    let started = Instant::now();
    for _ in 0..rounds {
        state::save_checkpoint(db, &Checkpoint::default(), Utc::now(), fence)
            .await
            .expect("checkpoint");
    }
    (flush, started.elapsed() / rounds as u32)
}

fn main() {
    let benching = common::benching();
    let (rounds, passes): (usize, &[bool]) = if benching {
        (
            common::env("TALLY_BENCH_ROUNDS", 200).max(1),
            &[false, true, false, true],
        )
    } else {
        (10, &[false, true])
    };
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async move {
            let uri = support::uri();
            let client = Client::with_uri_str(&uri).await.expect("client");
            let db = client.database(&support::unique_db("bench_fence"));
            connect::init(&db, false, false).await.expect("indexes");
            let fence = lease::try_acquire(&db, "bench", Duration::from_secs(600))
                .await
                .expect("lease")
                .expect("a free lease");
            // Mean times per pass, [unfenced, fenced].
            let (mut flushes, mut saves) = ([vec![], vec![]], [vec![], vec![]]);
            for &with_fence in passes {
                let (flush, save) = pass(&db, with_fence.then_some(&fence), rounds).await;
                println!(
                    "fenced={with_fence}: flush of 5 reports {flush:?}, checkpoint save {save:?} \
                     ({rounds} rounds)"
                );
                flushes[usize::from(with_fence)].push(flush);
                saves[usize::from(with_fence)].push(save);
            }
            let mean = |v: &[Duration]| v.iter().sum::<Duration>().as_secs_f64() / v.len() as f64;
            for (what, [plain, fenced]) in [("flush of 5 reports", flushes), ("checkpoint save", saves)] {
                let (a, b) = (mean(&plain), mean(&fenced));
                println!(
                    "fence cost per {what}: {:+.3} ms ({:+.1} %); unfenced {:.3} ms, fenced {:.3} ms",
                    (b - a) * 1e3,
                    100.0 * (b - a) / a.max(1e-9),
                    a * 1e3,
                    b * 1e3
                );
            }
            client.database(db.name()).drop().await.ok();
        });
}
