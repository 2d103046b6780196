//! Checks the SecantusDB test harness in `tests/support` itself.

mod support;

use std::path::PathBuf;

use mongodb::bson::{doc, Document};
use mongodb::Client;

#[tokio::test]
async fn shared_server_round_trip() {
    let client = Client::with_uri_str(support::uri()).await.unwrap();
    let db = client.database(&support::unique_db("harness"));
    let coll = db.collection::<Document>("docs");

    coll.insert_one(doc! { "_id": 1, "v": "hello" })
        .await
        .unwrap();
    let got = coll
        .find_one(doc! { "_id": 1 })
        .await
        .unwrap()
        .expect("document");
    assert_eq!(got.get_str("v").unwrap(), "hello");

    db.drop().await.unwrap();
}

#[test]
fn unique_db_names_are_unique_and_short() {
    let a = support::unique_db("a_rather_long_prefix_for_a_database_name");
    let b = support::unique_db("a_rather_long_prefix_for_a_database_name");
    assert_ne!(a, b);
    assert!(a.len() <= 38 && b.len() <= 38, "{a} / {b}");
    assert!(support::unique_db("x.y/z").starts_with("x_y_z_"));
}

/// Removes the directory when the test ends, pass or fail.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn private_server_keeps_data_across_restart() {
    let dir = TempDir(std::env::temp_dir().join(support::unique_db("tally-harness")));
    let mut server = support::start_server(&["--oplog-max-entries", "50"], Some(&dir.0));
    let port = server.port();

    let client = Client::with_uri_str(server.uri()).await.unwrap();
    let coll = client.database("harness").collection::<Document>("docs");
    coll.insert_one(doc! { "_id": "kept", "n": 42 })
        .await
        .unwrap();
    client.shutdown().await;

    server.restart();
    assert_eq!(server.port(), port);

    let client = Client::with_uri_str(server.uri()).await.unwrap();
    let coll = client.database("harness").collection::<Document>("docs");
    let got = coll.find_one(doc! { "_id": "kept" }).await.unwrap();
    assert_eq!(got.and_then(|d| d.get_i32("n").ok()), Some(42));
    client.shutdown().await;

    server.stop();
}
