//! The connection to MongoDB, the indexes and collection options tally
//! needs (`tally init`), and connection strings made safe to log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Context, Result};
use crate::Error;
use bson::{doc, Document};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Database, IndexModel};

use crate::core::reports::Kind;
use crate::mongo::lease::LEASE;
use crate::mongo::state::{FINALIZATIONS, STATE};
use crate::mongo::{errors, CATEGORIES, POCKETS, REJECTS, TRANSACTIONS};

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
    connect_observed(uri, database, None).await
}

/// Told of every command the client ran: its name, its collection (both
/// from closed sets: [`command_label`], [`collection_label`]) and its
/// round trip, as the driver measured it.
pub type OnCommand = Arc<dyn Fn(&'static str, &'static str, Duration) + Send + Sync>;

/// [`connect`], and with `on_command`, a census of the commands sent. The
/// driver then copies every command and reply into its events, so it is
/// for diagnosis (`tally run --command-stats`), not left on.
pub async fn connect_observed(
    uri: &str,
    database: &str,
    on_command: Option<OnCommand>,
) -> Result<Database> {
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
    if let Some(told) = on_command {
        opts.command_event_handler = Some(census(told));
    }
    let client = Client::with_options(opts)
        .with_context(|| format!("cannot create a client for {redacted}"))?;
    let db = client.database(database);
    db.run_command(doc! { "ping": 1 }).await.map_err(|e| {
        let message = format!("cannot reach MongoDB at {redacted}: {}", short_error(&e));
        Error::new(errors::kind_of(&e), message)
    })?;
    Ok(db)
}

/// The driver's command events, counted: a started command's collection is
/// kept by request id until its reply (or failure) gives the round trip.
fn census(told: OnCommand) -> EventHandler<CommandEvent> {
    let started: Mutex<HashMap<i32, &'static str>> = Mutex::default();
    EventHandler::callback(move |event| {
        let (name, request, took) = match event {
            CommandEvent::Started(e) => {
                let collection = e
                    .command
                    .iter()
                    .next()
                    .and_then(|(_, v)| v.as_str())
                    .or_else(|| e.command.get_str("collection").ok())
                    .map_or("", collection_label);
                let mut started = started.lock().unwrap_or_else(|e| e.into_inner());
                started.insert(e.request_id, collection);
                return;
            }
            CommandEvent::Succeeded(e) => (e.command_name, e.request_id, e.duration),
            CommandEvent::Failed(e) => (e.command_name, e.request_id, e.duration),
            _ => return,
        };
        let collection = started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&request)
            .unwrap_or("");
        told(command_label(&name), collection, took);
    })
}

/// A command's name as a metric label: the commands tally sends, anything
/// else `other`.
pub fn command_label(name: &str) -> &'static str {
    const SENT: [&str; 18] = [
        "aggregate",
        "getMore",
        "killCursors",
        "find",
        "insert",
        "update",
        "delete",
        "commitTransaction",
        "abortTransaction",
        "ping",
        "hello",
        "endSessions",
        "killSessions",
        "createIndexes",
        "collMod",
        "create",
        "listCollections",
        "listIndexes",
    ];
    SENT.into_iter().find(|n| *n == name).unwrap_or("other")
}

/// A collection's name as a metric label: tally's and coin's collections,
/// `$cmd.aggregate` for the database's change stream (its `getMore`s, which
/// wait for events on the server), anything else `other`; none for a
/// command of the database (`commitTransaction`, `ping`, the stream's
/// `aggregate`).
pub fn collection_label(name: &str) -> &'static str {
    [
        "$cmd.aggregate",
        TRANSACTIONS,
        POCKETS,
        CATEGORIES,
        REJECTS,
        LEASE,
        STATE,
        FINALIZATIONS,
    ]
    .into_iter()
    .chain(Kind::ALL.map(Kind::collection))
    .find(|n| *n == name)
    .unwrap_or("other")
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

    #[test]
    fn command_labels_come_from_closed_sets() {
        assert_eq!(command_label("update"), "update");
        assert_eq!(command_label("commitTransaction"), "commitTransaction");
        assert_eq!(command_label("mapReduce"), "other");
        assert_eq!(
            collection_label("daily_financial_reports"),
            "daily_financial_reports"
        );
        assert_eq!(collection_label("tally_lease"), "tally_lease");
        assert_eq!(collection_label("$cmd.aggregate"), "$cmd.aggregate");
        assert_eq!(collection_label("users"), "other");
    }
}
