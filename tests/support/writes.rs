//! tally's own writes, built by hand: the store-level checks of the lease
//! fence (`tests/ha.rs`) and its cost (`benches/fence.rs`) write them
//! through `mongo::bulk` without a running service.

use bson::oid::ObjectId;
use chrono::NaiveDate;
use tally::core::reports::Kind;
use tally::plan::write::{self, Write};

/// An upsert of `user`'s daily report of `day` (`YYYY-MM-DD`) with
/// `total_income` set to `total`, as a flush writes it.
pub fn report_write(user: ObjectId, day: &str, total: i64) -> Write {
    let day: NaiveDate = day.parse().expect("date");
    let filter = write::key_filter(Kind::Report, user, day);
    let mut set = filter.clone();
    set.insert("total_income", total);
    Write::Upsert {
        kind: Kind::Report,
        user,
        period: day,
        set: bson::RawDocumentBuf::from_document(&set).expect("encodes"),
        if_revision: None,
        leaves: None,
    }
}
