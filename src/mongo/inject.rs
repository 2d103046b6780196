//! Fault injection at named points of `tally run`, for the crash-anywhere
//! tests (`tests/faults.rs`). Off unless `TALLY_INJECT` is set:
//!
//! `TALLY_INJECT=seed=7,crash=15,fail=40`
//!
//! At every point a seeded draw crashes the process with probability
//! `crash`/1000 — `abort()`: nothing flushed, no destructor run, an open
//! transaction left open on the server, as `kill -9` leaves it — or fails
//! the operation there with probability `fail`/1000 (an error the service
//! must count and retry). The points sit between the awaits that matter:
//! inside and around fenced transactions, between a flush's writes and its
//! checkpoint, between a finalization's writes and its record, and between
//! the steps of a start and of a recovery from lost history.

use std::sync::{Mutex, OnceLock};

use crate::core::rng::Rng;

struct Injector {
    rng: Mutex<Rng>,
    crash: u64,
    fail: u64,
}

static INJECTOR: OnceLock<Option<Injector>> = OnceLock::new();

/// An injected failure.
#[derive(Debug)]
pub struct Injected(pub &'static str);

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "injected failure at {}", self.0)
    }
}

impl std::error::Error for Injected {}

impl From<Injected> for crate::Error {
    fn from(i: Injected) -> crate::Error {
        crate::Error::from_source(crate::Kind::Fatal, i)
    }
}

/// Reads `TALLY_INJECT` once; a malformed value is a usage error.
pub fn init() -> crate::error::Result<()> {
    let parsed = match std::env::var("TALLY_INJECT") {
        Ok(spec) if !spec.trim().is_empty() => Some(parse(&spec).map_err(|m| {
            crate::Error::config(format!(
                "TALLY_INJECT={spec:?}: {m} (expected seed=N,crash=PER_MILLE,fail=PER_MILLE)"
            ))
        })?),
        _ => None,
    };
    let _ = INJECTOR.set(parsed);
    Ok(())
}

fn parse(spec: &str) -> Result<Injector, String> {
    let (mut seed, mut crash, mut fail) = (0, 0, 0);
    for part in spec.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not key=value"))?;
        let value: u64 = value
            .trim()
            .parse()
            .map_err(|_| format!("{value:?} is not a whole number"))?;
        match key.trim() {
            "seed" => seed = value,
            "crash" => crash = value,
            "fail" => fail = value,
            other => return Err(format!("unknown key {other:?}")),
        }
    }
    if crash + fail > 1000 {
        return Err("crash + fail exceed 1000 per mille".to_owned());
    }
    Ok(Injector {
        rng: Mutex::new(Rng::new(seed)),
        crash,
        fail,
    })
}

/// A fault point: crashes, fails or passes as `TALLY_INJECT` draws.
pub fn point(name: &'static str) -> crate::error::Result<()> {
    let Some(Some(injector)) = INJECTOR.get() else {
        return Ok(());
    };
    let draw = injector
        .rng
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .below(1000);
    if draw < injector.crash {
        eprintln!("Injected crash at {name}.");
        std::process::abort();
    }
    if draw < injector.crash + injector.fail {
        return Err(Injected(name).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_is_parsed_and_bad_ones_are_refused() {
        let i = parse("seed=7,crash=15,fail=40").unwrap();
        assert_eq!((i.crash, i.fail), (15, 40));
        assert!(parse("seed=7,crash=x").is_err());
        assert!(parse("seed=7,boom=1").is_err());
        assert!(parse("crash=600,fail=600").is_err());
        assert!(parse("crash").is_err());
    }

    #[test]
    fn without_the_variable_every_point_passes() {
        // INJECTOR is unset in unit tests: `point` is a no-op.
        for _ in 0..1000 {
            assert!(point("unit").is_ok());
        }
    }
}
