//! Decoding of the source collections (`docs/data-contract.md` §1) into
//! typed values.
//!
//! Every accepted encoding is read here and nowhere else: legacy field names
//! (`pocket_from`, `pocket_to`), legacy upper-case types, amounts as double,
//! int32, int64, Decimal128 or numeric string. A document that is not valid
//! (contract §1.5) decodes to a [`RejectReason`]; optional fields of the
//! wrong type are treated as absent. A transaction `date` outside the
//! supported range (1900 through 2199,
//! [`crate::core::calendar::supports_millis`]) is rejected, so no later
//! stage does day arithmetic at the limits of the date types.
//! Pocket ids that the transaction's type does not name are dropped here
//! (contract §1.2), so later stages never see stale ids.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use bson::oid::ObjectId;
use bson::{Bson, Document, RawBsonRef, RawDocument};

use crate::core::calendar::supports_millis;
use crate::core::money::{Money, MoneyError};
use crate::core::vecmap::Keyed;

/// Why a source document counts nowhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    MissingUserId,
    InvalidUserId,
    MissingType,
    UnknownType,
    MissingAmount,
    InvalidAmount,
    NonFiniteAmount,
    AmountOutOfRange,
    NonPositiveAmount,
    MissingDate,
    InvalidDate,
    /// A datetime outside the supported range, 1900-01-01T00:00:00Z
    /// (included) to 2200-01-01T00:00:00Z (excluded):
    /// [`crate::core::calendar::supports_millis`].
    DateOutOfRange,
    InvalidId,
    MissingBalance,
    InvalidBalance,
    NonFiniteBalance,
    BalanceOutOfRange,
}

impl RejectReason {
    pub const ALL: [RejectReason; 17] = [
        RejectReason::MissingUserId,
        RejectReason::InvalidUserId,
        RejectReason::MissingType,
        RejectReason::UnknownType,
        RejectReason::MissingAmount,
        RejectReason::InvalidAmount,
        RejectReason::NonFiniteAmount,
        RejectReason::AmountOutOfRange,
        RejectReason::NonPositiveAmount,
        RejectReason::MissingDate,
        RejectReason::InvalidDate,
        RejectReason::DateOutOfRange,
        RejectReason::InvalidId,
        RejectReason::MissingBalance,
        RejectReason::InvalidBalance,
        RejectReason::NonFiniteBalance,
        RejectReason::BalanceOutOfRange,
    ];

    /// Stable snake_case name, used in `tally_rejects` and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MissingUserId => "missing_user_id",
            RejectReason::InvalidUserId => "invalid_user_id",
            RejectReason::MissingType => "missing_type",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::MissingAmount => "missing_amount",
            RejectReason::InvalidAmount => "invalid_amount",
            RejectReason::NonFiniteAmount => "non_finite_amount",
            RejectReason::AmountOutOfRange => "amount_out_of_range",
            RejectReason::NonPositiveAmount => "non_positive_amount",
            RejectReason::MissingDate => "missing_date",
            RejectReason::InvalidDate => "invalid_date",
            RejectReason::DateOutOfRange => "date_out_of_range",
            RejectReason::InvalidId => "invalid_id",
            RejectReason::MissingBalance => "missing_balance",
            RejectReason::InvalidBalance => "invalid_balance",
            RejectReason::NonFiniteBalance => "non_finite_balance",
            RejectReason::BalanceOutOfRange => "balance_out_of_range",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Transaction type after legacy names are folded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TxType {
    Income,
    Expense,
    /// Legacy debt payment: an outflow exactly like `expense`.
    Dp,
    /// Legacy withdrawal: an outflow exactly like `expense`.
    Withdraw,
    Transfer,
}

impl TxType {
    pub fn parse(s: &str) -> Option<TxType> {
        Some(match s {
            "income" | "INCOME" => TxType::Income,
            "expense" | "EXPENSE" => TxType::Expense,
            "dp" | "DEBT_PAYMENT" => TxType::Dp,
            "withdraw" | "WITHDRAW" => TxType::Withdraw,
            "transfer" | "TRANSFER" => TxType::Transfer,
            _ => return None,
        })
    }

    /// The canonical name written in report transaction lists.
    pub fn as_str(self) -> &'static str {
        match self {
            TxType::Income => "income",
            TxType::Expense => "expense",
            TxType::Dp => "dp",
            TxType::Withdraw => "withdraw",
            TxType::Transfer => "transfer",
        }
    }

    pub fn is_outflow(self) -> bool {
        matches!(self, TxType::Expense | TxType::Dp | TxType::Withdraw)
    }

    fn uses_from(self) -> bool {
        self != TxType::Income
    }

    fn uses_to(self) -> bool {
        matches!(self, TxType::Income | TxType::Transfer)
    }
}

/// A source `_id`, ordered as its hex (ObjectId) or canonical text form.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceId {
    Oid(ObjectId),
    /// Boxed: rare, and it keeps the common id small.
    Other(Box<Bson>),
}

impl SourceId {
    pub fn from_bson(b: &Bson) -> SourceId {
        match b {
            Bson::ObjectId(o) => SourceId::Oid(*o),
            other => SourceId::Other(Box::new(other.clone())),
        }
    }

    pub fn to_bson(&self) -> Bson {
        match self {
            SourceId::Oid(o) => Bson::ObjectId(*o),
            SourceId::Other(b) => (**b).clone(),
        }
    }

    fn element_type(&self) -> bson::spec::ElementType {
        match self {
            SourceId::Oid(_) => bson::spec::ElementType::ObjectId,
            SourceId::Other(b) => b.element_type(),
        }
    }

    fn sort_text(&self) -> String {
        match self {
            SourceId::Oid(o) => o.to_hex(),
            SourceId::Other(b) => match &**b {
                Bson::String(s) => s.clone(),
                other => other.to_string(),
            },
        }
    }
}

impl Eq for SourceId {}

impl std::hash::Hash for SourceId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            SourceId::Oid(o) => o.bytes().hash(state),
            other => {
                (other.element_type() as u8).hash(state);
                other.sort_text().hash(state);
            }
        }
    }
}

impl Ord for SourceId {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (SourceId::Oid(a), SourceId::Oid(b)) => a.bytes().cmp(&b.bytes()),
            // Text first (hex for ObjectIds), then the BSON type: ids that
            // print alike (1 and "1") are still two transactions.
            _ => self
                .sort_text()
                .cmp(&other.sort_text())
                .then_with(|| (self.element_type() as u8).cmp(&(other.element_type() as u8))),
        }
    }
}

impl PartialOrd for SourceId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A valid transaction (contract §1.1, §1.5), live or soft-deleted.
#[derive(Clone, Debug, PartialEq)]
pub struct Transaction {
    pub id: SourceId,
    pub user_id: ObjectId,
    pub kind: TxType,
    pub amount: Money,
    /// Only set when the type takes money from a pocket.
    pub pocket_from: Option<ObjectId>,
    /// Only set when the type puts money into a pocket.
    pub pocket_to: Option<ObjectId>,
    pub category_id: Option<ObjectId>,
    /// Shared with the ledger's transaction lists, so folding never copies it.
    pub note: Option<Arc<str>>,
    /// Business date, milliseconds since the epoch.
    pub date: i64,
    pub deleted: bool,
}

impl Transaction {
    pub fn is_live(&self) -> bool {
        !self.deleted
    }
}

/// Kept by id in the live window ([`Sorted`](crate::core::vecmap::Sorted)).
impl Keyed for Transaction {
    type Key = SourceId;
    fn key(&self) -> &SourceId {
        &self.id
    }
}

/// A pocket as far as it could be read. An invalid pocket still lends its
/// labels to the breakdown of its user's reports (contract §1.4, §1.5).
#[derive(Clone, Debug, PartialEq)]
pub struct Pocket {
    pub id: ObjectId,
    pub user_id: Option<ObjectId>,
    pub name: Option<String>,
    pub kind: Option<String>,
    /// The stored balance, or why it cannot be used.
    pub balance: Result<Money, RejectReason>,
    pub created_at: Option<i64>,
    pub deleted_at: Option<i64>,
}

/// Kept by id in the live window ([`Sorted`](crate::core::vecmap::Sorted)).
impl Keyed for Pocket {
    type Key = ObjectId;
    fn key(&self) -> &ObjectId {
        &self.id
    }
}

impl Pocket {
    /// The reason this pocket counts nowhere, if any.
    pub fn reject_reason(&self) -> Option<RejectReason> {
        match (&self.user_id, &self.balance) {
            (None, _) => Some(RejectReason::MissingUserId),
            (_, Err(r)) => Some(*r),
            _ => None,
        }
    }

    /// Whether the pocket counts on the day that ends (exclusive) at
    /// `day_end` millis: valid, created before and not deleted before.
    pub fn counts_before(&self, day_end: i64) -> bool {
        self.reject_reason().is_none()
            && self.created_at.is_none_or(|c| c < day_end)
            && self.deleted_at.is_none_or(|d| d >= day_end)
    }
}

/// The fields of a source document, read by name: a decoded [`Document`]
/// (the batch scans) or BSON bytes indexed in one pass ([`RawFields`],
/// change events), so that both decode by the same rules.
pub trait Fields {
    fn field(&self, key: &str) -> Option<Field<'_>>;
}

impl<T: Fields + ?Sized> Fields for &T {
    fn field(&self, key: &str) -> Option<Field<'_>> {
        (**self).field(key)
    }
}

impl Fields for Document {
    fn field(&self, key: &str) -> Option<Field<'_>> {
        self.get(key).map(Field::Bson)
    }
}

/// One field's value, borrowed from either form.
#[derive(Clone, Copy, Debug)]
pub enum Field<'a> {
    Bson(&'a Bson),
    Raw(RawBsonRef<'a>),
}

impl<'a> Field<'a> {
    fn is_null(self) -> bool {
        matches!(self, Field::Bson(Bson::Null) | Field::Raw(RawBsonRef::Null))
    }

    fn object_id(self) -> Option<ObjectId> {
        match self {
            Field::Bson(Bson::ObjectId(o)) => Some(*o),
            Field::Raw(RawBsonRef::ObjectId(o)) => Some(o),
            _ => None,
        }
    }

    fn datetime(self) -> Option<i64> {
        match self {
            Field::Bson(Bson::DateTime(d)) => Some(d.timestamp_millis()),
            Field::Raw(RawBsonRef::DateTime(d)) => Some(d.timestamp_millis()),
            _ => None,
        }
    }

    fn str(self) -> Option<&'a str> {
        match self {
            Field::Bson(Bson::String(s)) => Some(s),
            Field::Raw(RawBsonRef::String(s)) => Some(s),
            _ => None,
        }
    }

    /// An amount or a balance; every encoding [`Money::from_bson`] reads.
    fn money(self) -> Result<Money, MoneyError> {
        match self {
            Field::Bson(b) => Money::from_bson(b),
            Field::Raw(r) => Money::from_bson(&match r {
                RawBsonRef::Double(f) => Bson::Double(f),
                RawBsonRef::Int32(i) => Bson::Int32(i),
                RawBsonRef::Int64(i) => Bson::Int64(i),
                RawBsonRef::Decimal128(d) => Bson::Decimal128(d),
                RawBsonRef::String(s) => Bson::String(s.to_owned()),
                _ => return Err(MoneyError::NotANumber),
            }),
        }
    }

    /// An `_id` of any type; `None` for bytes that do not convert.
    fn source_id(self) -> Option<SourceId> {
        match self {
            Field::Bson(b) => Some(SourceId::from_bson(b)),
            Field::Raw(RawBsonRef::ObjectId(o)) => Some(SourceId::Oid(o)),
            Field::Raw(r) => Bson::try_from(r.to_raw_bson())
                .ok()
                .map(|b| SourceId::Other(Box::new(b))),
        }
    }
}

/// The keys the decoders read: [`RawFields`] keeps only these.
const KEYS: [&str; 15] = [
    "_id",
    "user_id",
    "type",
    "amount",
    "date",
    "pocket_from_id",
    "pocket_from",
    "pocket_to_id",
    "pocket_to",
    "category_id",
    "note",
    "deleted_at",
    "balance",
    "name",
    "created_at",
];

/// A source document's bytes with the fields tally reads found in one pass
/// (a later duplicate key wins, as in a decoded [`Document`]). Reading a
/// change event's document this way skips building a `Document`: a map, a
/// key string and a value per field, dropped right after.
#[derive(Clone, Debug)]
pub struct RawFields<'a> {
    doc: &'a RawDocument,
    values: [Option<RawBsonRef<'a>>; KEYS.len()],
}

impl<'a> RawFields<'a> {
    /// Fails on malformed bytes at the top level (every value is parsed;
    /// nested documents are read only if a decoder reads them).
    pub fn new(doc: &'a RawDocument) -> bson::raw::Result<RawFields<'a>> {
        let mut values = [None; KEYS.len()];
        for element in doc.iter_elements() {
            let element = element?;
            let value = element.value()?;
            if let Some(i) = KEYS.iter().position(|k| *k == element.key()) {
                values[i] = Some(value);
            }
        }
        Ok(RawFields { doc, values })
    }

    pub fn bytes(&self) -> &'a RawDocument {
        self.doc
    }
}

impl Fields for RawFields<'_> {
    fn field(&self, key: &str) -> Option<Field<'_>> {
        let i = KEYS.iter().position(|k| *k == key);
        debug_assert!(
            i.is_some(),
            "RawFields does not keep {key:?}: add it to KEYS"
        );
        self.values[i?].map(Field::Raw)
    }
}

/// Decodes a `transactions` document.
pub fn decode_transaction(doc: &impl Fields) -> Result<Transaction, RejectReason> {
    let id = doc
        .field("_id")
        .and_then(Field::source_id)
        .ok_or(RejectReason::InvalidId)?;
    let user_id = match doc.field("user_id") {
        None => return Err(RejectReason::MissingUserId),
        Some(v) if v.is_null() => return Err(RejectReason::MissingUserId),
        Some(v) => v.object_id().ok_or(RejectReason::InvalidUserId)?,
    };
    let kind = match doc.field("type") {
        None => return Err(RejectReason::MissingType),
        Some(v) if v.is_null() => return Err(RejectReason::MissingType),
        Some(v) => v
            .str()
            .and_then(TxType::parse)
            .ok_or(RejectReason::UnknownType)?,
    };
    let amount = match doc.field("amount") {
        None => return Err(RejectReason::MissingAmount),
        Some(v) if v.is_null() => return Err(RejectReason::MissingAmount),
        Some(v) => v.money().map_err(|e| match e {
            MoneyError::NotANumber => RejectReason::InvalidAmount,
            MoneyError::NotFinite => RejectReason::NonFiniteAmount,
            MoneyError::OutOfRange => RejectReason::AmountOutOfRange,
        })?,
    };
    if !amount.is_positive() {
        return Err(RejectReason::NonPositiveAmount);
    }
    let date = match doc.field("date") {
        None => return Err(RejectReason::MissingDate),
        Some(v) if v.is_null() => return Err(RejectReason::MissingDate),
        Some(v) => match v.datetime() {
            Some(d) if supports_millis(d) => d,
            Some(_) => return Err(RejectReason::DateOutOfRange),
            None => return Err(RejectReason::InvalidDate),
        },
    };
    let pocket_from = kind
        .uses_from()
        .then(|| pocket_field(doc, "pocket_from_id", "pocket_from"))
        .flatten();
    let pocket_to = kind
        .uses_to()
        .then(|| pocket_field(doc, "pocket_to_id", "pocket_to"))
        .flatten();
    Ok(Transaction {
        id,
        user_id,
        kind,
        amount,
        pocket_from,
        pocket_to,
        category_id: object_id(doc, "category_id"),
        note: doc.field("note").and_then(Field::str).map(Arc::from),
        date,
        deleted: doc.field("deleted_at").and_then(Field::datetime).is_some(),
    })
}

/// Decodes a `pockets` document. Only a pocket without an ObjectId `_id`
/// fails outright: nothing could refer to it.
pub fn decode_pocket(doc: &impl Fields) -> Result<Pocket, RejectReason> {
    let id = object_id(doc, "_id").ok_or(RejectReason::InvalidId)?;
    let balance = match doc.field("balance") {
        None => Err(RejectReason::MissingBalance),
        Some(v) if v.is_null() => Err(RejectReason::MissingBalance),
        // Whole cents, half-even (contract §2.3): float noise from coin's
        // arithmetic is not drift; a third decimal is.
        Some(v) => v.money().map(Money::to_cents).map_err(|e| match e {
            MoneyError::NotANumber => RejectReason::InvalidBalance,
            MoneyError::NotFinite => RejectReason::NonFiniteBalance,
            MoneyError::OutOfRange => RejectReason::BalanceOutOfRange,
        }),
    };
    Ok(Pocket {
        id,
        user_id: object_id(doc, "user_id"),
        name: string(doc, "name"),
        kind: string(doc, "type"),
        balance,
        created_at: doc.field("created_at").and_then(Field::datetime),
        deleted_at: doc.field("deleted_at").and_then(Field::datetime),
    })
}

/// Decodes a `user_categories` document into (id, name).
pub fn decode_category(doc: &impl Fields) -> Option<(ObjectId, String)> {
    let id = object_id(doc, "_id")?;
    Some((
        id,
        string(doc, "name").unwrap_or_else(|| "Unknown".to_owned()),
    ))
}

/// The document's `user_id`, if it is an ObjectId: the user an invalid
/// transaction would have counted for.
pub fn owner(doc: &impl Fields) -> Option<ObjectId> {
    object_id(doc, "user_id")
}

/// The `_id` form wins whenever its key is present (a present null means no
/// pocket); the legacy name is read only when that key is absent.
fn pocket_field(doc: &impl Fields, key: &str, legacy: &str) -> Option<ObjectId> {
    match doc.field(key) {
        Some(v) => v.object_id(),
        None => object_id(doc, legacy),
    }
}

fn object_id(doc: &impl Fields, key: &str) -> Option<ObjectId> {
    doc.field(key).and_then(Field::object_id)
}

fn string(doc: &impl Fields, key: &str) -> Option<String> {
    doc.field(key).and_then(Field::str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, DateTime, Decimal128, RawDocumentBuf};
    use std::str::FromStr;

    /// Every test here decodes each document both ways, as a `Document` (the
    /// batch scans) and from its bytes (change events), and checks that the
    /// two agree.
    fn both<T: PartialEq + fmt::Debug>(
        d: &Document,
        from_document: fn(&Document) -> T,
        from_bytes: fn(&RawFields) -> T,
    ) -> T {
        let raw = RawDocumentBuf::from_document(d).unwrap();
        let decoded = from_document(d);
        assert_eq!(from_bytes(&RawFields::new(&raw).unwrap()), decoded, "{d:?}");
        decoded
    }

    fn decode_transaction(d: &Document) -> Result<Transaction, RejectReason> {
        both(d, super::decode_transaction, |f| {
            super::decode_transaction(f)
        })
    }

    fn decode_pocket(d: &Document) -> Result<Pocket, RejectReason> {
        both(d, super::decode_pocket, |f| super::decode_pocket(f))
    }

    #[test]
    fn bytes_read_like_their_document_when_a_key_repeats_or_ids_are_not_object_ids() {
        // Bytes can hold a key twice; a decoded Document keeps the last value.
        let mut raw = RawDocumentBuf::new();
        raw.append("_id", "legacy-7");
        raw.append("user_id", "not yet");
        raw.append("type", "expense");
        raw.append("amount", 3.25);
        raw.append("date", DateTime::from_millis(1_700_000_000_000));
        let user = ObjectId::new();
        raw.append("user_id", user);
        raw.append("note", "first");
        raw.append("note", "second");
        let doc = Document::try_from(raw.as_ref()).unwrap();
        let tx = super::decode_transaction(&RawFields::new(&raw).unwrap()).unwrap();
        assert_eq!(Ok(tx.clone()), super::decode_transaction(&doc));
        assert_eq!(tx.user_id, user);
        assert_eq!(tx.note.as_deref(), Some("second"));
        assert_eq!(
            tx.id,
            SourceId::Other(Box::new(Bson::String("legacy-7".into())))
        );
        // Malformed bytes fail, as decoding them into a Document does.
        let mut bytes = raw.as_bytes().to_vec();
        bytes[4] = 0x7f; // the first element's type
        let broken = RawDocument::from_bytes(&bytes).unwrap();
        assert!(RawFields::new(broken).is_err());
        assert!(Document::try_from(broken).is_err());
    }

    fn base() -> Document {
        doc! {
            "_id": ObjectId::new(),
            "user_id": ObjectId::new(),
            "type": "expense",
            "amount": 12.5,
            "pocket_from_id": ObjectId::new(),
            "date": DateTime::from_millis(1_700_000_000_000),
        }
    }

    #[test]
    fn legacy_types_fold_into_canonical_ones() {
        for (raw, kind) in [
            ("INCOME", TxType::Income),
            ("DEBT_PAYMENT", TxType::Dp),
            ("dp", TxType::Dp),
            ("WITHDRAW", TxType::Withdraw),
            ("TRANSFER", TxType::Transfer),
        ] {
            let mut d = base();
            d.insert("type", raw);
            assert_eq!(decode_transaction(&d).unwrap().kind, kind);
        }
        let mut d = base();
        d.insert("type", "Income");
        assert_eq!(decode_transaction(&d), Err(RejectReason::UnknownType));
    }

    #[test]
    fn amounts_of_every_type_decode() {
        let cases: Vec<Bson> = vec![
            Bson::Double(12.5),
            Bson::Int32(12),
            Bson::Int64(12),
            Bson::Decimal128(Decimal128::from_str("12.50").unwrap()),
            Bson::String(" 12.5 ".into()),
        ];
        for v in cases {
            let mut d = base();
            d.insert("amount", v.clone());
            assert!(decode_transaction(&d).is_ok(), "{v:?}");
        }
        for (v, reason) in [
            (Bson::Int32(0), RejectReason::NonPositiveAmount),
            (Bson::Double(-1.0), RejectReason::NonPositiveAmount),
            (Bson::Double(f64::NAN), RejectReason::NonFiniteAmount),
            (Bson::String("12,5".into()), RejectReason::InvalidAmount),
            (Bson::Boolean(true), RejectReason::InvalidAmount),
            (Bson::Null, RejectReason::MissingAmount),
        ] {
            let mut d = base();
            d.insert("amount", v);
            assert_eq!(decode_transaction(&d), Err(reason));
        }
    }

    #[test]
    fn required_fields_name_their_reason() {
        let mut d = base();
        d.remove("user_id");
        assert_eq!(decode_transaction(&d), Err(RejectReason::MissingUserId));
        let mut d = base();
        d.insert("user_id", "abc");
        assert_eq!(decode_transaction(&d), Err(RejectReason::InvalidUserId));
        let mut d = base();
        d.remove("type");
        assert_eq!(decode_transaction(&d), Err(RejectReason::MissingType));
        let mut d = base();
        d.insert("date", "2026-01-01");
        assert_eq!(decode_transaction(&d), Err(RejectReason::InvalidDate));
        let mut d = base();
        d.remove("date");
        assert_eq!(decode_transaction(&d), Err(RejectReason::MissingDate));
    }

    #[test]
    fn legacy_pocket_names_are_read_only_when_the_id_key_is_absent() {
        let legacy = ObjectId::new();
        let mut d = base();
        d.remove("pocket_from_id");
        d.insert("pocket_from", legacy);
        assert_eq!(decode_transaction(&d).unwrap().pocket_from, Some(legacy));
        d.insert("pocket_from_id", Bson::Null);
        assert_eq!(decode_transaction(&d).unwrap().pocket_from, None);
        d.insert("pocket_from_id", "not-an-id");
        assert_eq!(decode_transaction(&d).unwrap().pocket_from, None);
    }

    #[test]
    fn only_the_pockets_named_for_the_type_count() {
        let mut d = base();
        d.insert("pocket_to_id", ObjectId::new());
        let tx = decode_transaction(&d).unwrap();
        assert!(tx.pocket_from.is_some());
        assert_eq!(tx.pocket_to, None, "an expense has no pocket_to");
        d.insert("type", "income");
        let tx = decode_transaction(&d).unwrap();
        assert_eq!(tx.pocket_from, None, "an income has no pocket_from");
        assert!(tx.pocket_to.is_some());
    }

    #[test]
    fn wrong_typed_optional_fields_are_absent() {
        let mut d = base();
        d.insert("deleted_at", "yesterday");
        d.insert("category_id", 42);
        d.insert("note", 7);
        let tx = decode_transaction(&d).unwrap();
        assert!(tx.is_live());
        assert_eq!(tx.category_id, None);
        assert_eq!(tx.note, None);
        d.insert("deleted_at", DateTime::from_millis(0));
        assert!(!decode_transaction(&d).unwrap().is_live());
    }

    #[test]
    fn pockets_decode_and_count_by_their_dates() {
        let user = ObjectId::new();
        let p = decode_pocket(&doc! {
            "_id": ObjectId::new(), "user_id": user, "name": "Main", "type": "main",
            "balance": "-20.5", "created_at": DateTime::from_millis(1000),
            "deleted_at": DateTime::from_millis(5000),
        })
        .unwrap();
        assert_eq!(p.balance, Ok("-20.5".parse().unwrap()));
        assert!(!p.counts_before(1000), "created at the day's end: not yet");
        assert!(p.counts_before(1001));
        assert!(
            p.counts_before(5000),
            "deleted exactly at the day's end still counts"
        );
        assert!(!p.counts_before(5001));
        let bad = decode_pocket(&doc! { "_id": ObjectId::new(), "user_id": user, "balance": "x" })
            .unwrap();
        assert_eq!(bad.reject_reason(), Some(RejectReason::InvalidBalance));
        assert!(!bad.counts_before(i64::MAX));
        let zero =
            decode_pocket(&doc! { "_id": ObjectId::new(), "user_id": user, "balance": 0 }).unwrap();
        assert_eq!(zero.reject_reason(), None);
    }

    #[test]
    fn balances_read_at_whole_cents_half_even_amounts_as_they_are() {
        let pocket = |b: Bson| decode_pocket(&doc! { "_id": ObjectId::new(), "balance": b });
        let read = |b: Bson| pocket(b).unwrap().balance.unwrap().to_string();
        let dec = |s: &str| Bson::Decimal128(s.parse().unwrap());
        assert_eq!(read(dec("2144365.3999999994")), "2144365.4");
        assert_eq!(read(dec("-8901337.2700000033")), "-8901337.27");
        assert_eq!(read(dec("0.125")), "0.12", "half to even, down");
        assert_eq!(read(dec("0.135")), "0.14", "half to even, up");
        assert_eq!(read(dec("-0.125")), "-0.12");
        assert_eq!(read(dec("10.001")), "10", "a third decimal is cut: drift");
        assert_eq!(read(Bson::Int64(7)), "7");
        // coin's arithmetic: Decimal128 → float → add → shortest text.
        let mut float = 0.0f64;
        let mut exact = Money::ZERO;
        for i in 0..1000u32 {
            let cents = (i * 7919) % 100_000;
            let amount: Money = format!("{}.{:02}", cents / 100, cents % 100)
                .parse()
                .unwrap();
            float = format!("{}", float + amount.to_string().parse::<f64>().unwrap())
                .parse()
                .unwrap();
            exact += amount;
        }
        let noisy = Money::from_f64(float).unwrap();
        assert_ne!(noisy, exact, "the float sum carries noise");
        assert_eq!(pocket(Bson::Double(float)).unwrap().balance, Ok(exact));
        let amount = decode_transaction(&doc! {
            "_id": 1, "user_id": ObjectId::new(), "type": "income",
            "amount": dec("10.001"), "date": DateTime::from_millis(0),
        });
        assert_eq!(
            amount.unwrap().amount.to_string(),
            "10.001",
            "amounts are never rounded"
        );
    }

    /// The path of a transaction's date, decode → ledger → reports, the
    /// day arithmetic of the scans and the tailer around it included.
    fn fold_and_report(cal: &crate::core::calendar::Calendar, tx: &Transaction) {
        use crate::core::calendar::{first_of_month, last_of_month, next_day, prev_day};
        use crate::core::reports::{earliest_dependency, Categories, Kind, UserView};
        let mut ledger = crate::core::ledger::UserLedger::default();
        ledger.apply(cal, tx);
        let day = cal.day_of_millis(tx.date);
        let (before, after) = (prev_day(first_of_month(day)), next_day(last_of_month(day)));
        let _ = (cal.day_start(before), cal.day_end(after));
        let _ = cal.day_start(earliest_dependency(day));
        let pocket = Pocket {
            id: tx.pocket_from.unwrap_or_default(),
            user_id: Some(tx.user_id),
            name: None,
            kind: None,
            balance: Ok(Money::ZERO),
            created_at: Some(tx.date),
            deleted_at: None,
        };
        let pockets = std::collections::BTreeMap::from([(pocket.id, pocket)]);
        let categories = Categories::default();
        let view = UserView::new(tx.user_id, &ledger, pockets.values(), &categories, cal);
        let docs = view.build_range(&Kind::ALL, before, after, next_day(day));
        assert!(docs.iter().any(|(k, d, _)| *k == Kind::Report && *d == day));
        ledger.retract(cal, tx);
        assert!(ledger.days.is_empty());
    }

    #[test]
    fn dates_outside_the_supported_range_are_rejected_and_never_panic() {
        use crate::core::calendar::{Calendar, SUPPORTED_FROM_MILLIS, SUPPORTED_UNTIL_MILLIS};
        let year = |y: i32| {
            chrono::NaiveDate::from_ymd_opt(y, 1, 1)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                .timestamp_millis()
        };
        let outside = [
            i64::MIN,
            i64::MIN + 1,
            chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp_millis(),
            year(1),
            year(1) - 1,
            year(1899),
            SUPPORTED_FROM_MILLIS - 1,
            SUPPORTED_UNTIL_MILLIS,
            year(9999),
            year(10000) - 1,
            chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_millis(),
            i64::MAX - 1,
            i64::MAX,
        ];
        let inside = [
            SUPPORTED_FROM_MILLIS,
            SUPPORTED_FROM_MILLIS + 1,
            -86_400_001,
            -1,
            0,
            1_700_000_000_000,
            SUPPORTED_UNTIL_MILLIS - 86_400_000,
            SUPPORTED_UNTIL_MILLIS - 1,
        ];
        let zones = [
            "UTC",
            "Pacific/Kiritimati", // +14:00
            "Etc/GMT+12",         // -12:00
            "America/New_York",
            "Asia/Manila", // a local date that once ran a day back
        ];
        for millis in outside {
            let mut d = base();
            d.insert("date", DateTime::from_millis(millis));
            assert_eq!(
                decode_transaction(&d),
                Err(RejectReason::DateOutOfRange),
                "{millis}"
            );
            // Soft-deleted or not: the date is checked either way.
            d.insert("deleted_at", DateTime::from_millis(0));
            assert_eq!(decode_transaction(&d), Err(RejectReason::DateOutOfRange));
        }
        for name in zones {
            let cal = Calendar::from_name(name).unwrap();
            for millis in inside {
                for kind in ["expense", "income", "transfer"] {
                    let mut d = base();
                    d.insert("type", kind);
                    d.insert("pocket_to_id", ObjectId::new());
                    d.insert("date", DateTime::from_millis(millis));
                    let tx = decode_transaction(&d).unwrap_or_else(|r| panic!("{millis}: {r}"));
                    fold_and_report(&cal, &tx);
                }
            }
        }
        assert_eq!(RejectReason::DateOutOfRange.as_str(), "date_out_of_range");
        assert!(RejectReason::ALL.contains(&RejectReason::DateOutOfRange));
    }
}
