//! Where a report builder writes a document: a [`bson::Document`] tree
//! ([`DocOut`], what the batch path compares field by field) or one byte
//! buffer in BSON's encoding ([`RawOut`], what the live path fingerprints
//! and sends). The builders of `crate::core::reports` write each field
//! once, through [`Out`], so the two forms cannot disagree.
//!
//! A `Document` costs an `IndexMap` grown field by field, a `String` per
//! key and a `Document` per list entry, all freed after the write; one
//! buffer costs a few appends. `cargo bench --bench document_build`
//! measured 5.7–7.6× less to build and drop a document of the monthly
//! summary's shape (BENCHMARKS.md (3), fifth update).

use bson::oid::ObjectId;
use bson::{Bson, DateTime, Decimal128, Document, RawDocumentBuf};

use crate::core::money::Money;

/// A document being written: fields in order, nested documents and lists
/// opened and closed. Inside a list, the key given is ignored: entries
/// take their index.
pub trait Out {
    /// The finished document.
    type Doc;

    /// A document expected to take about `bytes` once encoded (a hint:
    /// [`RawOut`] starts its buffer at that size).
    fn with_capacity(bytes: usize) -> Self;
    fn finish(self) -> Self::Doc;

    fn new() -> Self
    where
        Self: Sized,
    {
        Self::with_capacity(1024)
    }

    fn decimal(&mut self, key: &str, d: Decimal128);
    fn string(&mut self, key: &str, s: &str);
    fn null(&mut self, key: &str);
    fn oid(&mut self, key: &str, o: ObjectId);
    fn int64(&mut self, key: &str, v: i64);
    fn double(&mut self, key: &str, v: f64);
    fn boolean(&mut self, key: &str, v: bool);
    fn datetime(&mut self, key: &str, v: DateTime);
    /// Any value (the rare ids that are not ObjectIds).
    fn bson(&mut self, key: &str, v: &Bson);
    fn begin_document(&mut self, key: &str);
    fn begin_array(&mut self, key: &str);
    /// Closes the document or list opened last.
    fn end(&mut self);

    fn money(&mut self, key: &str, m: Money) {
        self.decimal(key, m.to_decimal128());
    }

    fn opt_oid(&mut self, key: &str, o: Option<ObjectId>) {
        match o {
            Some(o) => self.oid(key, o),
            None => self.null(key),
        }
    }

    fn opt_string(&mut self, key: &str, s: Option<&str>) {
        match s {
            Some(s) => self.string(key, s),
            None => self.null(key),
        }
    }

    /// Opens the next entry of the list opened last, a document.
    fn begin_entry(&mut self) {
        self.begin_document("");
    }
}

/// Writes a [`Document`].
#[derive(Debug)]
pub struct DocOut {
    /// The document, then each open document or list with its key.
    open: Vec<(String, Frame)>,
}

#[derive(Debug)]
enum Frame {
    Document(Document),
    Array(Vec<Bson>),
}

impl DocOut {
    fn put(&mut self, key: &str, v: Bson) {
        match &mut self.open.last_mut().expect("a document is open").1 {
            Frame::Document(d) => {
                d.insert(key, v);
            }
            Frame::Array(a) => a.push(v),
        }
    }

    fn begin(&mut self, key: &str, frame: Frame) {
        self.open.push((key.to_owned(), frame));
    }
}

impl Out for DocOut {
    type Doc = Document;

    fn with_capacity(_: usize) -> DocOut {
        DocOut {
            open: vec![(String::new(), Frame::Document(Document::new()))],
        }
    }

    fn finish(mut self) -> Document {
        debug_assert_eq!(self.open.len(), 1, "every document and list closed");
        match self.open.pop() {
            Some((_, Frame::Document(d))) => d,
            _ => unreachable!("the bottom frame is the document"),
        }
    }

    fn decimal(&mut self, key: &str, d: Decimal128) {
        self.put(key, Bson::Decimal128(d));
    }
    fn string(&mut self, key: &str, s: &str) {
        self.put(key, Bson::String(s.to_owned()));
    }
    fn null(&mut self, key: &str) {
        self.put(key, Bson::Null);
    }
    fn oid(&mut self, key: &str, o: ObjectId) {
        self.put(key, Bson::ObjectId(o));
    }
    fn int64(&mut self, key: &str, v: i64) {
        self.put(key, Bson::Int64(v));
    }
    fn double(&mut self, key: &str, v: f64) {
        self.put(key, Bson::Double(v));
    }
    fn boolean(&mut self, key: &str, v: bool) {
        self.put(key, Bson::Boolean(v));
    }
    fn datetime(&mut self, key: &str, v: DateTime) {
        self.put(key, Bson::DateTime(v));
    }
    fn bson(&mut self, key: &str, v: &Bson) {
        self.put(key, v.clone());
    }
    fn begin_document(&mut self, key: &str) {
        self.begin(key, Frame::Document(Document::new()));
    }
    fn begin_array(&mut self, key: &str) {
        self.begin(key, Frame::Array(Vec::new()));
    }
    fn end(&mut self) {
        assert!(self.open.len() > 1, "end without a begin");
        let (key, frame) = self.open.pop().expect("checked");
        let v = match frame {
            Frame::Document(d) => Bson::Document(d),
            Frame::Array(a) => Bson::Array(a),
        };
        self.put(&key, v);
    }
}

/// Writes a document's BSON bytes into one buffer.
#[derive(Debug)]
pub struct RawOut {
    buf: Vec<u8>,
    /// Per open document or list: where its length goes, and for a list
    /// its next index (`None` for a document).
    open: Vec<(usize, Option<u32>)>,
}

impl RawOut {
    /// Continues `doc`: fields written next are appended to it.
    pub fn reopen(doc: RawDocumentBuf) -> RawOut {
        let mut buf = doc.into_bytes();
        buf.pop(); // the document's closing NUL, written again by `finish`
        RawOut {
            buf,
            open: vec![(0, None)],
        }
    }

    /// An element's type and key (the next index inside a list).
    fn key(&mut self, element: u8, key: &str) {
        self.buf.push(element);
        match &mut self.open.last_mut().expect("a document is open").1 {
            Some(index) => {
                let i = *index;
                *index += 1;
                push_decimal(&mut self.buf, i);
            }
            None => {
                debug_assert!(!key.contains('\0'), "a key with a NUL: {key:?}");
                self.buf.extend_from_slice(key.as_bytes());
            }
        }
        self.buf.push(0);
    }

    fn begin(&mut self, element: u8, key: &str, list: bool) {
        self.key(element, key);
        self.open.push((self.buf.len(), list.then_some(0)));
        self.buf.extend_from_slice(&[0; 4]);
    }

    fn close(&mut self) {
        self.buf.push(0);
        let (start, _) = self.open.pop().expect("a document is open");
        let len = i32::try_from(self.buf.len() - start).expect("a document under 2 GiB");
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }
}

impl Out for RawOut {
    type Doc = RawDocumentBuf;

    fn with_capacity(bytes: usize) -> RawOut {
        let mut buf = Vec::with_capacity(bytes.max(5));
        // The document's length, written when it is finished.
        buf.extend_from_slice(&[0; 4]);
        RawOut {
            buf,
            open: vec![(0, None)],
        }
    }

    fn finish(mut self) -> RawDocumentBuf {
        debug_assert_eq!(self.open.len(), 1, "every document and list closed");
        self.close();
        RawDocumentBuf::from_bytes(self.buf).expect("a whole document")
    }

    fn decimal(&mut self, key: &str, d: Decimal128) {
        self.key(0x13, key);
        self.buf.extend_from_slice(&d.bytes());
    }
    fn string(&mut self, key: &str, s: &str) {
        self.key(0x02, key);
        let len = i32::try_from(s.len() + 1).expect("a string under 2 GiB");
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }
    fn null(&mut self, key: &str) {
        self.key(0x0A, key);
    }
    fn oid(&mut self, key: &str, o: ObjectId) {
        self.key(0x07, key);
        self.buf.extend_from_slice(&o.bytes());
    }
    fn int64(&mut self, key: &str, v: i64) {
        self.key(0x12, key);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn double(&mut self, key: &str, v: f64) {
        self.key(0x01, key);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn boolean(&mut self, key: &str, v: bool) {
        self.key(0x08, key);
        self.buf.push(u8::from(v));
    }
    fn datetime(&mut self, key: &str, v: DateTime) {
        self.key(0x09, key);
        self.buf
            .extend_from_slice(&v.timestamp_millis().to_le_bytes());
    }
    fn bson(&mut self, key: &str, v: &Bson) {
        match v {
            Bson::ObjectId(o) => return self.oid(key, *o),
            Bson::String(s) => return self.string(key, s),
            Bson::Int64(i) => return self.int64(key, *i),
            Bson::DateTime(d) => return self.datetime(key, *d),
            Bson::Null => return self.null(key),
            _ => {}
        }
        // Rarer: encoded by bson as the one field of a document, whose
        // element is copied (type, the key "v", the value).
        let one = RawDocumentBuf::from_document(&bson::doc! { "v": v.clone() })
            .expect("a value bson encodes");
        let bytes = one.as_bytes();
        let value = &bytes[4 + 1 + 2..bytes.len() - 1];
        self.key(bytes[4], key);
        self.buf.extend_from_slice(value);
    }
    fn begin_document(&mut self, key: &str) {
        self.begin(0x03, key, false);
    }
    fn begin_array(&mut self, key: &str) {
        self.begin(0x04, key, true);
    }
    fn end(&mut self) {
        assert!(self.open.len() > 1, "end without a begin");
        self.close();
    }
}

/// Appends `i` in decimal digits: a list entry's key, without the
/// `String` that `to_string` allocates for each entry.
fn push_decimal(buf: &mut Vec<u8>, mut i: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (i % 10) as u8;
        i /= 10;
        if i == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

/// The top-level elements of a document's BSON bytes, in order: each
/// element's key and its bytes (type, key and value). Reads lengths only:
/// no UTF-8 check, no decoding of values, so reading a few fields of a
/// written document, or hashing its content, costs one pass over it.
/// `None` at the first malformed element.
pub fn elements(doc: &[u8]) -> impl Iterator<Item = Option<(&[u8], &[u8])>> {
    let end = doc.len().saturating_sub(1);
    let mut at = 4;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let element = element_len(&doc[at..end]);
        let Some((key_len, len)) = element else {
            at = end;
            return Some(None);
        };
        let bytes = &doc[at..at + len];
        at += len;
        Some(Some((&bytes[1..1 + key_len], bytes)))
    })
}

/// The key's length and the whole element's length of the element that
/// starts `bytes` (BSON 1.1's element types).
fn element_len(bytes: &[u8]) -> Option<(usize, usize)> {
    let key_len = bytes.get(1..)?.iter().position(|&b| b == 0)?;
    let value = 1 + key_len + 1;
    let i32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(value + at..value + at + 4)?;
        usize::try_from(i32::from_le_bytes(b.try_into().ok()?)).ok()
    };
    let cstring_at = |at: usize| -> Option<usize> {
        Some(bytes.get(value + at..)?.iter().position(|&b| b == 0)? + 1)
    };
    let value_len = match bytes[0] {
        0x06 | 0x0A | 0x7F | 0xFF => 0,
        0x08 => 1,
        0x10 => 4,
        0x01 | 0x09 | 0x11 | 0x12 => 8,
        0x07 => 12,
        0x13 => 16,
        0x02 | 0x0D | 0x0E => 4 + i32_at(0)?,
        0x03 | 0x04 | 0x0F => i32_at(0)?,
        0x05 => 5 + i32_at(0)?,
        0x0B => {
            let pattern = cstring_at(0)?;
            pattern + cstring_at(pattern)?
        }
        0x0C => 4 + i32_at(0)? + 12,
        _ => return None,
    };
    let len = value + value_len;
    (len <= bytes.len()).then_some((key_len, len))
}

/// The value bytes of the top-level field `key` of a document's BSON
/// bytes, with its element type; `None` if it has none.
pub fn field<'d>(doc: &'d [u8], key: &str) -> Option<(u8, &'d [u8])> {
    elements(doc)
        .map_while(|e| e)
        .find(|(k, _)| *k == key.as_bytes())
        .map(|(k, bytes)| (bytes[0], &bytes[1 + k.len() + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes one document of every element type, nested both ways.
    fn write<O: Out>() -> O::Doc {
        let mut o = O::new();
        o.oid("user_id", ObjectId::from_bytes([7; 12]));
        o.money("amount", "-12.50".parse().unwrap());
        o.string("name", "Café");
        o.null("none");
        o.int64("count", -3);
        o.double("percent", 12.25);
        o.boolean("is_final", true);
        o.datetime("at", DateTime::from_millis(1_790_000_000_123));
        o.bson("legacy_id", &Bson::String("tx-1".into()));
        o.bson("int_id", &Bson::Int32(5));
        // Every other element type, for the element walker.
        for (i, v) in [
            Bson::Binary(bson::Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: vec![1, 2],
            }),
            Bson::Undefined,
            Bson::RegularExpression(bson::Regex {
                pattern: "a.*".into(),
                options: "i".into(),
            }),
            Bson::JavaScriptCode("f()".into()),
            Bson::JavaScriptCodeWithScope(bson::JavaScriptCodeWithScope {
                code: "g()".into(),
                scope: bson::doc! { "x": 1 },
            }),
            Bson::Symbol("s".into()),
            Bson::Timestamp(bson::Timestamp {
                time: 1,
                increment: 2,
            }),
            Bson::MinKey,
            Bson::MaxKey,
        ]
        .iter()
        .enumerate()
        {
            o.bson(&format!("other_{i}"), v);
        }
        o.begin_array("list");
        for i in 0..12 {
            o.begin_entry();
            o.int64("i", i);
            o.begin_array("inner");
            o.string("ignored", "a");
            o.end();
            o.end();
        }
        o.end();
        o.begin_document("nested");
        o.opt_oid("maybe", None);
        o.opt_string("label", Some("x"));
        o.begin_array("empty");
        o.end();
        o.end();
        o.finish()
    }

    #[test]
    fn list_keys_are_the_decimal_digits_of_their_index() {
        for i in [0, 7, 9, 10, 99, 100, 1_000_003, u32::MAX] {
            let mut buf = b"k".to_vec();
            push_decimal(&mut buf, i);
            assert_eq!(buf, format!("k{i}").into_bytes());
        }
    }

    #[test]
    fn the_buffer_holds_the_bytes_bson_encodes_for_the_same_document() {
        let doc = write::<DocOut>();
        let raw = write::<RawOut>();
        assert_eq!(
            raw.as_bytes(),
            RawDocumentBuf::from_document(&doc).unwrap().as_bytes()
        );
        assert_eq!(raw.to_document().unwrap(), doc);
        // Read back element by element: the keys bson reads, in order.
        let keys: Vec<&[u8]> = elements(raw.as_bytes()).map(|e| e.unwrap().0).collect();
        let expected: Vec<&[u8]> = doc.keys().map(|k| k.as_bytes()).collect();
        assert_eq!(keys, expected);
        assert_eq!(field(raw.as_bytes(), "is_final"), Some((0x08, &[1_u8][..])));
        assert_eq!(
            field(raw.as_bytes(), "count"),
            Some((0x12, &(-3_i64).to_le_bytes()[..]))
        );
        assert_eq!(field(raw.as_bytes(), "absent"), None);
        // Lists take their indexes, whatever key the writer gave.
        let list = doc.get_array("list").unwrap();
        assert_eq!(list.len(), 12);
        assert_eq!(
            list[11].as_document().unwrap().get_array("inner").unwrap(),
            &vec![Bson::String("a".into())]
        );
    }
}
