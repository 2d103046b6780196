//! A change event, read in place from its raw bytes.

use crate::core::source::RawFields;
use crate::error::{Context, Result};
use bson::{Bson, RawBsonRef, RawDocument};
use mongodb::change_stream::event::OperationType;

/// The fields of a change event tally reads, taken from its raw bytes
/// (reading them in place is about 3× faster than deserializing the
/// driver's `ChangeStreamEvent<Document>`; `benches/ledger.rs`). The
/// documents stay bytes too, their fields found in one pass
/// ([`RawFields`]), and borrow from the event.
#[derive(Debug)]
pub struct Event<'a> {
    pub operation_type: OperationType,
    pub collection: &'a str,
    /// `documentKey._id` (`Null` when absent).
    pub id: Bson,
    pub full_document: Option<RawFields<'a>>,
    pub full_document_before_change: Option<RawFields<'a>>,
    pub wall_millis: Option<i64>,
}

impl<'a> Event<'a> {
    /// Reads the event's top-level fields in one pass over its bytes (a
    /// look-up per field walked them six times: 5% of the live replay). A
    /// field named twice keeps its first value, as a look-up finds it.
    pub fn from_raw(raw: &'a RawDocument) -> Result<Event<'a>> {
        let (mut op, mut ns, mut key, mut wall) = (None, None, None, None);
        let (mut full, mut before) = (None, None);
        for element in raw {
            let (name, value) = element.context("change event")?;
            let slot = match name {
                "operationType" => &mut op,
                "ns" => &mut ns,
                "documentKey" => &mut key,
                "fullDocument" => &mut full,
                "fullDocumentBeforeChange" => &mut before,
                "wallTime" => &mut wall,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        let op = op.and_then(|v| v.as_str()).context("operationType")?;
        let operation_type = match op {
            "insert" => OperationType::Insert,
            "update" => OperationType::Update,
            "replace" => OperationType::Replace,
            "delete" => OperationType::Delete,
            other => bson::from_bson(Bson::String(other.to_owned()))
                .with_context(|| format!("operationType {other:?}"))?,
        };
        let collection = (ns.and_then(|v| v.as_document()))
            .and_then(|ns| ns.get_str("coll").ok())
            .unwrap_or_default();
        let id = match (key.and_then(|v| v.as_document())).and_then(|k| k.get("_id").ok().flatten())
        {
            Some(v) => Bson::try_from(v.to_raw_bson()).context("documentKey._id")?,
            None => Bson::Null,
        };
        // Absent, null or not a document: none.
        let document = |value: Option<RawBsonRef<'a>>, field: &str| match value
            .and_then(|v| v.as_document())
        {
            Some(d) => Ok(Some(RawFields::new(d).with_context(|| field.to_owned())?)),
            None => Ok::<_, crate::error::Error>(None),
        };
        Ok(Event {
            operation_type,
            collection,
            id,
            full_document: document(full, "fullDocument")?,
            full_document_before_change: document(before, "fullDocumentBeforeChange")?,
            wall_millis: wall
                .and_then(|v| v.as_datetime())
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
            assert_eq!(ours.collection, coll.as_str());
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

        // A field named twice reads as a look-up finds it: the first.
        let mut twice = RawDocumentBuf::new();
        twice.append("operationType", "delete");
        twice.append("fullDocument", 7);
        twice.append("operationType", "insert");
        let wall = bson::DateTime::from_millis(5);
        twice.append("wallTime", wall);
        twice.append("wallTime", bson::DateTime::from_millis(9));
        let event = Event::from_raw(&twice).unwrap();
        assert_eq!(event.operation_type, OperationType::Delete);
        assert!(event.full_document.is_none(), "not a document: none");
        assert_eq!(event.wall_millis, Some(5));
        assert_eq!(twice.get_str("operationType").unwrap(), "delete");
    }
}
