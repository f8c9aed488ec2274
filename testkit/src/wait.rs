//! Bounded waits: poll until a condition holds.
//!
//! Both forms stop after `limit` has passed *or* after `limit / every + 1` polls,
//! whichever comes first, and then panic naming what never happened. The count bound keeps
//! a wait finite under tokio's paused clock too (where [`eventually`] measures time with
//! `tokio::time::Instant`, which the runtime advances). Tests choose generous limits and
//! assert outcomes, never how long something took: machines running tests are noisy.

use std::future::Future;
use std::time::Duration;

/// How many polls fit in `limit` at one every `every` (at least one).
fn polls(limit: Duration, every: Duration) -> u128 {
    limit.as_nanos() / every.as_nanos().max(1) + 1
}

/// Polls `f` every `every` until it returns `Some`, or panics with `what` after `limit`.
/// Blocks the thread; for async code use [`eventually`].
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = std::time::Instant::now();
    let mut left = polls(limit, every);
    loop {
        if let Some(v) = f() {
            return v;
        }
        left -= 1;
        if left == 0 || start.elapsed() > limit {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// Awaits `f()` every `every` until it yields `Some`, or panics with `what` after `limit`.
pub async fn eventually<T, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Fut,
) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    let mut left = polls(limit, every);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        left -= 1;
        if left == 0 || start.elapsed() > limit {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value() {
        let mut n = 0;
        let v = wait_until(
            "n to reach 3",
            Duration::from_secs(60),
            Duration::ZERO,
            || {
                n += 1;
                (n == 3).then_some(n * 10)
            },
        );
        assert_eq!(v, 30);
    }

    #[test]
    #[should_panic(expected = "timed out waiting for the impossible")]
    fn gives_up_after_its_polls() {
        wait_until(
            "the impossible",
            Duration::from_millis(50),
            Duration::from_millis(10),
            || None::<()>,
        );
    }

    #[test]
    fn poll_counts() {
        assert_eq!(
            polls(Duration::from_secs(1), Duration::from_millis(100)),
            11
        );
        assert_eq!(polls(Duration::from_secs(1), Duration::ZERO), 1_000_000_001);
    }

    #[tokio::test(start_paused = true)]
    async fn eventually_counts_polls_on_a_paused_clock() {
        let mut calls = 0;
        let v = eventually(
            "the third call",
            Duration::from_secs(10),
            Duration::from_secs(1),
            || {
                calls += 1;
                let c = calls;
                async move { (c == 3).then_some(c) }
            },
        )
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out waiting for nothing")]
    async fn eventually_gives_up() {
        eventually(
            "nothing",
            Duration::from_secs(5),
            Duration::from_secs(1),
            || async { None::<()> },
        )
        .await;
    }
}
