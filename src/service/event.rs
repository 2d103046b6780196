//! A change event, read in place from its raw bytes.

use crate::core::source::RawFields;
use crate::error::{Context, Result};
use bson::{Bson, RawDocument};
use mongodb::change_stream::event::OperationType;

/// The fields of a change event tally reads, taken from its raw bytes
/// (reading them in place is about 3× faster than deserializing the
/// driver's `ChangeStreamEvent<Document>`; `benches/ledger.rs`). The
/// documents stay bytes too, their fields found in one pass
/// ([`RawFields`]), and borrow from the event.
#[derive(Debug)]
pub struct Event<'a> {
    pub operation_type: OperationType,
    pub collection: String,
    /// `documentKey._id` (`Null` when absent).
    pub id: Bson,
    pub full_document: Option<RawFields<'a>>,
    pub full_document_before_change: Option<RawFields<'a>>,
    pub wall_millis: Option<i64>,
}

impl<'a> Event<'a> {
    pub fn from_raw(raw: &'a RawDocument) -> Result<Event<'a>> {
        let op = raw.get_str("operationType").context("operationType")?;
        let operation_type = match op {
            "insert" => OperationType::Insert,
            "update" => OperationType::Update,
            "replace" => OperationType::Replace,
            "delete" => OperationType::Delete,
            other => bson::from_bson(Bson::String(other.to_owned()))
                .with_context(|| format!("operationType {other:?}"))?,
        };
        let collection = raw
            .get_document("ns")
            .ok()
            .and_then(|ns| ns.get_str("coll").ok())
            .unwrap_or_default()
            .to_owned();
        let id = match raw
            .get_document("documentKey")
            .ok()
            .and_then(|k| k.get("_id").ok().flatten())
        {
            Some(v) => Bson::try_from(v.to_raw_bson()).context("documentKey._id")?,
            None => Bson::Null,
        };
        let document = |field: &str| -> Result<Option<RawFields<'a>>> {
            match raw.get_document(field) {
                Ok(d) => Ok(Some(RawFields::new(d).with_context(|| field.to_owned())?)),
                Err(_) => Ok(None), // absent or null
            }
        };
        Ok(Event {
            operation_type,
            collection,
            id,
            full_document: document("fullDocument")?,
            full_document_before_change: document("fullDocumentBeforeChange")?,
            wall_millis: raw
                .get_datetime("wallTime")
                .ok()
                .map(|t| t.timestamp_millis()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Document, RawDocumentBuf, Timestamp};
    use mongodb::change_stream::event::ChangeStreamEvent;

    #[test]
    fn raw_events_read_like_the_drivers_typed_events() {
        let id = bson::oid::ObjectId::new();
        let full = doc! { "_id": id, "user_id": id, "type": "expense", "amount": 1.5 };
        let events = [
            doc! {
                "_id": { "_data": "8263" }, "operationType": "insert",
                "ns": { "db": "coin", "coll": "transactions" },
                "documentKey": { "_id": id }, "fullDocument": full.clone(),
                "wallTime": bson::DateTime::from_millis(1_700_000_000_123),
                "clusterTime": Timestamp { time: 1, increment: 2 },
            },
            doc! {
                "_id": { "_data": "8264" }, "operationType": "delete",
                "ns": { "db": "coin", "coll": "pockets" },
                "documentKey": { "_id": "legacy-1" }, "fullDocument": Bson::Null,
                "fullDocumentBeforeChange": full.clone(),
            },
            doc! { "_id": { "_data": "8265" }, "operationType": "invalidate" },
        ];
        for e in events {
            let raw = RawDocumentBuf::from_document(&e).unwrap();
            let ours = Event::from_raw(&raw).unwrap();
            let typed: ChangeStreamEvent<Document> = bson::from_document(e).unwrap();
            assert_eq!(ours.operation_type, typed.operation_type);
            let coll = typed.ns.and_then(|n| n.coll).unwrap_or_default();
            assert_eq!(ours.collection, coll);
            let key = typed.document_key.and_then(|k| k.get("_id").cloned());
            assert_eq!(ours.id, key.unwrap_or(Bson::Null));
            let decoded = |f: Option<RawFields>| f.map(|f| Document::try_from(f.bytes()).unwrap());
            assert_eq!(decoded(ours.full_document), typed.full_document);
            assert_eq!(
                decoded(ours.full_document_before_change),
                typed.full_document_before_change
            );
            assert_eq!(
                ours.wall_millis,
                typed.wall_time.map(|w| w.timestamp_millis())
            );
        }
        let bad = RawDocumentBuf::from_document(&doc! { "operationType": 5 }).unwrap();
        assert!(Event::from_raw(&bad).is_err());
    }
}
