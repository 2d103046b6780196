//! Classification of MongoDB errors by what the server says — error codes
//! and error labels — never by the text of a message, which servers and
//! driver versions word differently (and a message can quote user data).
//!
//! Codes are those of the server's `error_codes.yml`:
//! 11000 `DuplicateKey`, 286 `ChangeStreamHistoryLost`, 26
//! `NamespaceNotFound`. Code 280 `ChangeStreamFatalError` is deliberately
//! not history loss: the server raises it for any change stream that cannot
//! continue (a pipeline that drops `_id`, a post-image lookup that fails, a
//! transaction with too many operations…), and MongoDB documents only 286
//! as "the resume point is no longer in the oplog".
//!
//! [`kind_of`] turns these into the [`Kind`] of tally's error; every
//! MongoDB error becomes a [`crate::Error`] through it.

use mongodb::error::{Error, ErrorKind, WriteFailure};

use crate::Kind;

/// MongoDB's `DuplicateKey`.
pub const DUPLICATE_KEY: i32 = 11000;
/// MongoDB's `ChangeStreamHistoryLost`.
pub const CHANGE_STREAM_HISTORY_LOST: i32 = 286;
/// MongoDB's `NamespaceNotFound`.
pub const NAMESPACE_NOT_FOUND: i32 = 26;
/// MongoDB's `NamespaceExists`.
pub const NAMESPACE_EXISTS: i32 = 48;

/// The server's code of a command error, if `e` is one.
pub fn command_code(e: &Error) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// A unique index refused a write: code 11000 as a command error, as the
/// write error of a single write, or as any of the write errors of an
/// `insert_many` or a client bulk write.
pub fn is_duplicate_key(e: &Error) -> bool {
    match &*e.kind {
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .iter()
            .flatten()
            .any(|w| w.code == DUPLICATE_KEY),
        ErrorKind::BulkWrite(b) => b.write_errors.values().any(|w| w.code == DUPLICATE_KEY),
        _ => false,
    }
}

/// The change stream cannot resume: the oplog no longer holds its resume
/// point (code 286 only; see the module docs for 280).
pub fn is_history_lost(e: &Error) -> bool {
    command_code(e) == Some(CHANGE_STREAM_HISTORY_LOST)
}

/// The collection (or database) does not exist (code 26).
pub fn is_namespace_not_found(e: &Error) -> bool {
    command_code(e) == Some(NAMESPACE_NOT_FOUND)
}

/// An error that may go away by itself (network, election, overload):
/// worth retrying after a wait.
pub fn is_transient(e: &Error) -> bool {
    const LABELS: [&str; 5] = [
        "RetryableError",
        "RetryableWriteError",
        "ResumableChangeStreamError",
        "TransientTransactionError",
        "SystemOverloadedError",
    ];
    // HostUnreachable, HostNotFound, NetworkTimeout, ShutdownInProgress,
    // PrimarySteppedDown, SocketException, NotWritablePrimary,
    // InterruptedAtShutdown, InterruptedDueToReplStateChange,
    // NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary.
    const CODES: [i32; 11] = [6, 7, 89, 91, 189, 9001, 10107, 11600, 11602, 13435, 13436];
    matches!(
        &*e.kind,
        ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
    ) || matches!(&*e.kind, ErrorKind::Command(c) if CODES.contains(&c.code))
        || LABELS.iter().any(|l| e.contains_label(l))
}

/// What a caller can do about a MongoDB error, from its code and labels.
pub fn kind_of(e: &Error) -> Kind {
    if is_history_lost(e) {
        Kind::HistoryLost
    } else if is_duplicate_key(e) {
        Kind::DuplicateKey
    } else if is_transient(e) {
        Kind::Transient
    } else {
        Kind::Fatal
    }
}

impl From<Error> for crate::Error {
    fn from(e: Error) -> crate::Error {
        crate::Error::from_source(kind_of(&e), e)
    }
}

/// A write conflict, or a commit whose outcome is unknown: run the whole
/// transaction again. Looks for the server's error through the context.
pub fn is_transient_transaction(e: &crate::Error) -> bool {
    e.find::<Error>().is_some_and(|m| {
        m.contains_label("TransientTransactionError")
            || m.contains_label("UnknownTransactionCommitResult")
    })
}

#[cfg(test)]
mod tests {
    //! The driver's error types are built from the documents a server
    //! sends, as the driver itself builds them (its error types deserialize
    //! from the reply); labels ride on a write concern error's
    //! `errorLabels`, which the driver lifts onto the error.
    use super::*;
    use bson::doc;
    use mongodb::error::{
        BulkWriteError, CommandError, InsertManyError, WriteConcernError, WriteError,
    };

    /// A message that names a duplicate key and lost history, to show the
    /// text is never read.
    const MISLEADING: &str = "E11000 duplicate key error ChangeStreamHistoryLost";

    fn command(code: i32) -> Error {
        let c: CommandError =
            bson::from_document(doc! { "code": code, "codeName": "Some", "errmsg": MISLEADING })
                .unwrap();
        Error::from(ErrorKind::Command(c))
    }

    fn write_error(code: i32) -> WriteError {
        bson::from_document(doc! { "code": code, "errmsg": MISLEADING }).unwrap()
    }

    fn write(code: i32) -> Error {
        Error::from(ErrorKind::Write(WriteFailure::WriteError(write_error(
            code,
        ))))
    }

    fn insert_many(codes: &[i32]) -> Error {
        let errors: Vec<_> = codes
            .iter()
            .enumerate()
            .map(|(i, c)| doc! { "index": i as i64, "code": c, "errmsg": MISLEADING })
            .collect();
        let m: InsertManyError = bson::from_document(doc! { "writeErrors": errors }).unwrap();
        Error::from(ErrorKind::InsertMany(m))
    }

    fn bulk(codes: &[i32]) -> Error {
        let mut b = BulkWriteError::default();
        for (i, c) in codes.iter().enumerate() {
            b.write_errors.insert(i, write_error(*c));
        }
        Error::from(ErrorKind::BulkWrite(b))
    }

    fn labelled(labels: &[&str]) -> Error {
        let wc: WriteConcernError = bson::from_document(
            doc! { "code": 64, "errmsg": "waiting for replication timed out", "errorLabels": labels },
        )
        .unwrap();
        Error::from(ErrorKind::Write(WriteFailure::WriteConcernError(wc)))
    }

    fn custom(text: &str) -> Error {
        Error::custom(text.to_owned())
    }

    #[test]
    fn duplicate_keys_are_recognized_by_code_in_every_shape() {
        assert!(is_duplicate_key(&command(11000)));
        assert!(is_duplicate_key(&write(11000)));
        assert!(is_duplicate_key(&insert_many(&[11000])));
        assert!(is_duplicate_key(&insert_many(&[121, 11000])));
        assert!(is_duplicate_key(&bulk(&[11000])));
        assert!(is_duplicate_key(&bulk(&[2, 11000])));
        // The text says "duplicate key"; the code does not.
        assert!(!is_duplicate_key(&command(2)));
        assert!(!is_duplicate_key(&write(121)));
        assert!(!is_duplicate_key(&insert_many(&[121])));
        assert!(!is_duplicate_key(&insert_many(&[])));
        assert!(!is_duplicate_key(&bulk(&[121])));
        assert!(!is_duplicate_key(&custom(MISLEADING)));
        assert!(!is_duplicate_key(&labelled(&[])));
    }

    #[test]
    fn history_loss_is_code_286_only() {
        assert!(is_history_lost(&command(286)));
        assert!(
            !is_history_lost(&command(280)),
            "ChangeStreamFatalError is not history loss"
        );
        assert!(!is_history_lost(&command(11000)));
        assert!(!is_history_lost(&write(286)), "not a command error");
        assert!(!is_history_lost(&custom(MISLEADING)));
    }

    #[test]
    fn namespace_not_found_is_code_26() {
        assert!(is_namespace_not_found(&command(26)));
        assert!(!is_namespace_not_found(&command(27)));
        assert!(!is_namespace_not_found(&custom("ns not found")));
    }

    #[test]
    fn transient_errors_by_kind_code_and_label_keep_their_kind_under_context() {
        let kind = |e: Error| {
            crate::Error::from(e)
                .context("writing the checkpoint")
                .kind()
        };
        assert_eq!(
            kind(Error::from(std::io::ErrorKind::ConnectionReset)),
            Kind::Transient
        );
        for code in [6, 7, 89, 91, 189, 9001, 10107, 11600, 11602, 13435, 13436] {
            assert_eq!(kind(command(code)), Kind::Transient, "{code}");
        }
        for label in [
            "RetryableError",
            "RetryableWriteError",
            "ResumableChangeStreamError",
            "TransientTransactionError",
            "SystemOverloadedError",
        ] {
            assert_eq!(kind(labelled(&[label])), Kind::Transient, "{label}");
        }
        assert_eq!(kind(command(11000)), Kind::DuplicateKey);
        assert_eq!(kind(command(286)), Kind::HistoryLost);
        assert_eq!(kind(command(280)), Kind::Fatal);
        assert_eq!(kind(labelled(&[])), Kind::Fatal);
        assert_eq!(kind(custom("HostUnreachable")), Kind::Fatal);
        assert_eq!(kind(custom(MISLEADING)), Kind::Fatal);
    }

    #[test]
    fn transient_transactions_by_label_under_context() {
        let wrap = |e: Error| crate::Error::from(e).context("a fenced write");
        assert!(is_transient_transaction(&wrap(labelled(&[
            "TransientTransactionError"
        ]))));
        assert!(is_transient_transaction(&wrap(labelled(&[
            "UnknownTransactionCommitResult"
        ]))));
        assert!(!is_transient_transaction(&wrap(labelled(&[
            "RetryableWriteError"
        ]))));
        assert!(!is_transient_transaction(&wrap(command(112))));
        assert!(!is_transient_transaction(&crate::Error::fatal(
            "TransientTransactionError"
        )));
    }
}
