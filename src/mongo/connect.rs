//! The connection to MongoDB, the indexes and collection options tally
//! needs (`tally init`), and connection strings made safe to log.

use std::time::Duration;

use crate::error::{Context, Result};
use crate::Error;
use bson::{doc, Document};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Database, IndexModel};

use crate::core::reports::Kind;
use crate::mongo::{errors, POCKETS, REJECTS, TRANSACTIONS};

/// Hides the password (and user) of a connection string.
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://").map(|i| i + 3) else {
        return uri.to_owned();
    };
    let rest = &uri[scheme_end..];
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{}***@{}", &uri[..scheme_end], &rest[at + 1..]),
        None => uri.to_owned(),
    }
}

/// Connects and checks the server answers, within a few seconds.
pub async fn connect(uri: &str, database: &str) -> Result<Database> {
    let redacted = redact_uri(uri);
    let mut opts = ClientOptions::parse(uri).await.map_err(|e| match *e.kind {
        // A malformed URI; anything else (a DNS lookup of a
        // mongodb+srv URI) may pass on a restart.
        mongodb::error::ErrorKind::InvalidArgument { .. } => {
            Error::config(format!("invalid MongoDB URI {redacted}: {}", e.kind))
        }
        _ => Error::new(
            errors::kind_of(&e),
            format!("cannot resolve the MongoDB URI {redacted}: {}", e.kind),
        ),
    })?;
    opts.app_name.get_or_insert_with(|| "tally".to_owned());
    opts.server_selection_timeout
        .get_or_insert(Duration::from_secs(5));
    // Also the timeout of the driver's heartbeat: a server busy serving a
    // large read (SecantusDB during the window load) must not be declared
    // gone, which would interrupt every operation in flight. An unreachable
    // server is still reported after the 5 s of server selection.
    opts.connect_timeout.get_or_insert(Duration::from_secs(30));
    let client = Client::with_options(opts)
        .with_context(|| format!("cannot create a client for {redacted}"))?;
    let db = client.database(database);
    db.run_command(doc! { "ping": 1 }).await.map_err(|e| {
        let message = format!("cannot reach MongoDB at {redacted}: {}", short_error(&e));
        Error::new(errors::kind_of(&e), message)
    })?;
    Ok(db)
}

fn short_error(e: &mongodb::error::Error) -> String {
    match &*e.kind {
        mongodb::error::ErrorKind::ServerSelection { .. } => {
            "no server answered within 5 s".to_owned()
        }
        other => other.to_string(),
    }
}

/// Creates the unique indexes of the output collections (and one by period,
/// for the nightly steps) and `tally_rejects`;
/// with `source_index`, also `{user_id: 1, date: 1}` on `transactions`.
/// Returns one line per action, for the operator.
pub async fn init(db: &Database, source_index: bool, pre_images: bool) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for kind in Kind::ALL {
        let model = IndexModel::builder()
            .keys(doc! { "user_id": 1, kind.date_field(): 1 })
            .options(IndexOptions::builder().unique(true).build())
            .build();
        db.collection::<Document>(kind.collection())
            .create_index(model)
            .await
            .with_context(|| format!("creating the unique index of {}", kind.collection()))?;
        done.push(format!(
            "unique index (user_id, {}) on {}",
            kind.date_field(),
            kind.collection()
        ));
        // The nightly steps close one period of every user at once.
        db.collection::<Document>(kind.collection())
            .create_index(
                IndexModel::builder()
                    .keys(doc! { kind.date_field(): 1 })
                    .build(),
            )
            .await
            .with_context(|| format!("creating the period index of {}", kind.collection()))?;
        done.push(format!(
            "index ({}) on {}",
            kind.date_field(),
            kind.collection()
        ));
    }
    let model = IndexModel::builder()
        .keys(doc! { "collection": 1, "source_id": 1 })
        .options(IndexOptions::builder().unique(true).build())
        .build();
    db.collection::<Document>(REJECTS)
        .create_index(model)
        .await
        .context("creating the index of tally_rejects")?;
    done.push(format!("unique index (collection, source_id) on {REJECTS}"));
    // The source indexes the scans need: transactions by (user_id, date),
    // pockets by user_id. They change no document of the source.
    for (coll, keys, name) in [
        (
            TRANSACTIONS,
            doc! { "user_id": 1, "date": 1 },
            "user_id_1_date_1",
        ),
        (POCKETS, doc! { "user_id": 1 }, "user_id_1"),
    ] {
        if source_index {
            let model = IndexModel::builder().keys(keys).build();
            db.collection::<Document>(coll)
                .create_index(model)
                .await
                .with_context(|| format!("creating the index {name} on {coll}"))?;
            done.push(format!("index {name} on {coll}"));
        } else {
            let names = match db.collection::<Document>(coll).list_index_names().await {
                Ok(names) => names,
                // No collection yet: no index either.
                Err(e) if errors::is_namespace_not_found(&e) => Vec::new(),
                Err(e) => {
                    return Err(e).with_context(|| format!("listing the indexes of {coll}"));
                }
            };
            if !names.iter().any(|n| n == name) {
                done.push(format!(
                    "suggestion: index {name} on {coll} is missing; backfill, reconcile and \
                     run query by it — rerun with --create-source-index"
                ));
            }
        }
    }
    if pre_images {
        match enable_pre_images(db).await {
            Ok(()) => done.push("change-stream pre-images enabled on transactions".to_owned()),
            Err(e) => done.push(format!(
                "pre-images not enabled on transactions ({}); tally run still works without them \
                 — if they cannot be enabled, set no_pre_images so that tally indexes what \
                 locates hard deletes",
                short_error(&e)
            )),
        }
    } else {
        // Told to work without pre-images, tally finds a hard delete
        // through the reports that list it (`Backend::locate`). These
        // multikey indexes make that a lookup instead of a collection scan.
        // They cost every report write an index entry per listed
        // transaction, so they are made only then.
        for field in LOCATE_FIELDS {
            db.collection::<Document>(Kind::Report.collection())
                .create_index(IndexModel::builder().keys(doc! { field: 1 }).build())
                .await
                .with_context(|| format!("creating the index ({field}) on daily reports"))?;
            done.push(format!(
                "index ({field}) on {}, to locate hard deletes without pre-images",
                Kind::Report.collection()
            ));
        }
    }
    Ok(done)
}

/// The fields of a daily report that list transaction and pocket ids: what
/// a hard delete without a pre-image is looked up by.
pub const LOCATE_FIELDS: [&str; 2] = [
    "transactions_by_pocket.transactions.transaction_id",
    "transactions_by_pocket.pocket_id",
];

/// Turns on change-stream pre- and post-images of `transactions` with
/// `collMod`, or `create` when the collection does not exist yet (and
/// `collMod` again if another client created it in between). Needs no
/// `listCollections`, which the least-privilege role lacks.
async fn enable_pre_images(db: &Database) -> mongodb::error::Result<()> {
    let images = doc! { "enabled": true };
    let coll_mod = doc! { "collMod": TRANSACTIONS, "changeStreamPreAndPostImages": images.clone() };
    match db.run_command(coll_mod.clone()).await {
        Err(e) if errors::is_namespace_not_found(&e) => {}
        other => return other.map(drop),
    }
    let create = doc! { "create": TRANSACTIONS, "changeStreamPreAndPostImages": images };
    match db.run_command(create).await {
        Err(e) if errors::command_code(&e) == Some(errors::NAMESPACE_EXISTS) => {
            db.run_command(coll_mod).await.map(drop)
        }
        other => other.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_survive_redaction() {
        assert_eq!(
            redact_uri("mongodb://alice:s3cret@db:27017/coin"),
            "mongodb://***@db:27017/coin"
        );
        assert_eq!(
            redact_uri("mongodb+srv://a:b@x.example/?w=1"),
            "mongodb+srv://***@x.example/?w=1"
        );
        assert_eq!(
            redact_uri("mongodb://127.0.0.1:27017"),
            "mongodb://127.0.0.1:27017"
        );
    }
}
