//! tally's error: what went wrong, with the context of what tally was doing,
//! and a [`Kind`] that says what a caller can do about it. The kind is
//! decided once, where the error arises — from the server's codes and
//! labels ([`crate::mongo::errors`]) or by tally's own code — and never
//! from message text; context added on the way up keeps it.
//!
//! `anyhow` appears only at the binary's edge ([`crate::cli`]), where an
//! error becomes a message and an exit status ([`crate::cli::exit_status`]).

use std::error::Error as StdError;
use std::fmt;

/// A result whose error is tally's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caller can do about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// May go away by itself (network, election, overload): retry after a
    /// pause.
    Transient,
    /// A call got no answer within its limit; its outcome is unknown.
    /// Retried like [`Kind::Transient`], after the caller settles the
    /// unknown outcome (e.g. aborts an open transaction).
    TimedOut,
    /// The change stream's resume point is no longer in the server's
    /// history: start again from a recomputation.
    HistoryLost,
    /// Another instance holds the lease now: stop writing and stand by.
    LeaseLost,
    /// A unique index refused a write: someone else stored the key first.
    DuplicateKey,
    /// A flag, setting or URI is wrong: no restart can fix it (exit 2).
    Config,
    /// Anything else: the operation failed (exit 3 at the edge; a
    /// supervisor restarts the service).
    Fatal,
}

/// An error of tally's library. Display shows the outermost context;
/// the alternate form (`{:#}`) the whole chain, `outer: inner: cause`.
pub struct Error(Box<Inner>);

struct Inner {
    kind: Kind,
    /// Context, or the message of an error tally raised itself. `None`:
    /// the error is its source (a driver error, an I/O error...).
    message: Option<String>,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl Error {
    /// An error tally raises itself.
    pub fn new(kind: Kind, message: impl fmt::Display) -> Error {
        Error(Box::new(Inner {
            kind,
            message: Some(message.to_string()),
            source: None,
        }))
    }

    /// An error of another library, of the kind given.
    pub fn from_source(kind: Kind, source: impl StdError + Send + Sync + 'static) -> Error {
        Error(Box::new(Inner {
            kind,
            message: None,
            source: Some(Box::new(source)),
        }))
    }

    /// A [`Kind::Fatal`] error with this message.
    pub fn fatal(message: impl fmt::Display) -> Error {
        Error::new(Kind::Fatal, message)
    }

    /// A [`Kind::Config`] error: what to fix.
    pub fn config(message: impl fmt::Display) -> Error {
        Error::new(Kind::Config, message)
    }

    /// The same error, inside what tally was doing.
    pub fn context(self, context: impl fmt::Display) -> Error {
        Error(Box::new(Inner {
            kind: self.0.kind,
            message: Some(context.to_string()),
            source: Some(Box::new(self)),
        }))
    }

    pub fn kind(&self) -> Kind {
        self.0.kind
    }

    /// Whether waiting and trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.0.kind, Kind::Transient | Kind::TimedOut)
    }

    /// Every error of the chain, outermost first (context layers that only
    /// wrap a source are the source).
    pub fn chain(&self) -> impl Iterator<Item = &(dyn StdError + 'static)> {
        let mut next: Option<&(dyn StdError + 'static)> = Some(self);
        std::iter::from_fn(move || loop {
            let e = next?;
            next = e.source();
            match e.downcast_ref::<Error>() {
                Some(own) if own.0.message.is_none() => continue,
                _ => return Some(e),
            }
        })
    }

    /// The first error of type `T` in the chain.
    pub fn find<T: StdError + 'static>(&self) -> Option<&T> {
        let mut next: Option<&(dyn StdError + 'static)> = Some(self);
        while let Some(e) = next {
            if let Some(t) = e.downcast_ref::<T>() {
                return Some(t);
            }
            next = e.source();
        }
        None
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            for (i, e) in self.chain().enumerate() {
                if i > 0 {
                    f.write_str(": ")?;
                }
                match e.downcast_ref::<Error>() {
                    Some(own) => f.write_str(own.0.message.as_deref().unwrap_or_default())?,
                    None => write!(f, "{e}")?,
                }
            }
            return Ok(());
        }
        match (&self.0.message, &self.0.source) {
            (Some(m), _) => f.write_str(m),
            (None, Some(s)) => write!(f, "{s}"),
            (None, None) => f.write_str("error"),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {self:#}", self.0.kind)
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

/// Context for results and options, as `anyhow::Context` gives it.
pub trait Context<T> {
    fn context(self, context: impl fmt::Display) -> Result<T>;
    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }

    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.into().context(context()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error::fatal(context))
    }

    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.ok_or_else(|| Error::fatal(context()))
    }
}

/// Errors of other libraries that tally cannot act on: [`Kind::Fatal`].
/// (MongoDB's errors are classified in [`crate::mongo::errors`].)
macro_rules! fatal_sources {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::from_source(Kind::Fatal, e)
            }
        }
    )*};
}

fatal_sources!(
    std::io::Error,
    std::fmt::Error,
    bson::de::Error,
    bson::ser::Error,
    bson::raw::Error,
    bson::document::ValueAccessError,
    serde_json::Error,
    tokio::task::JoinError,
    bson::raw::ValueAccessError,
);

/// Returns early with a [`Kind::Fatal`] error made from a format string.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::fatal(format!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_the_kind_and_the_alternate_form_shows_the_chain() {
        let io = std::io::Error::other("disk on fire");
        let e = Error::from(io)
            .context("writing the log")
            .context("stopping");
        assert_eq!(e.kind(), Kind::Fatal);
        assert_eq!(e.to_string(), "stopping");
        assert_eq!(format!("{e:#}"), "stopping: writing the log: disk on fire");
        assert!(e.find::<std::io::Error>().is_some());
        let lost = Error::new(Kind::LeaseLost, "token 4 is gone").context("flushing");
        assert_eq!(lost.kind(), Kind::LeaseLost);
        assert!(!lost.is_retryable());
        assert!(Error::new(Kind::TimedOut, "x").context("y").is_retryable());
    }

    #[test]
    fn a_source_error_shows_once_and_options_get_a_message() {
        let e = Error::from(std::fmt::Error);
        assert_eq!(format!("{e:#}"), std::fmt::Error.to_string());
        assert_eq!(e.chain().count(), 1);
        let none: Option<u8> = None;
        let e = none.context("no pocket").unwrap_err();
        assert_eq!(
            (e.kind(), e.to_string().as_str()),
            (Kind::Fatal, "no pocket")
        );
    }
}
