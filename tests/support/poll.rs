//! Waiting for a condition: the one poll loop behind every "until X, or
//! fail after T" of the integration tests.

use std::future::Future;
use std::time::{Duration, Instant};

/// Calls `check` every `every` until it gives a value, and returns that
/// value.
///
/// `check` is told whether `timeout` (counted from this call) has run out.
/// Once it has, `check` panics saying what it waited for and what it saw,
/// or returns the value a caller takes for "not in time" (e.g.
/// `Some(None)`); a `None` then panics here without a word of what. An
/// assertion inside `check` (a child process that must stay alive) fails
/// at the first call that sees it.
pub async fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut check: impl AsyncFnMut(bool) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let late = Instant::now() >= deadline;
        if let Some(v) = check(late).await {
            return v;
        }
        assert!(!late, "not within {timeout:?} (the check did not say what)");
        tokio::time::sleep(every).await;
    }
}

/// Waits until `check` holds, polling every 100 ms; panics naming `what`
/// after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll(timeout, Duration::from_millis(100), async |late| {
        let held = check().await;
        assert!(held || !late, "{what}: not within {timeout:?}");
        held.then_some(())
    })
    .await
}
