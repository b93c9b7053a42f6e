//! The one retry/backoff helper every storage call goes through.
//!
//! object_store's own retry loop is switched off (see `storage`) so that retries, their
//! bound and the per-attempt timeout live in one place: a failure is either permanent (403,
//! 404, a bad URL: retrying cannot help and only delays a clear error) or transient
//! (timeouts, 5xx, connection resets), and only transient ones are retried, with
//! exponential backoff, jitter and an upper bound on attempts. No attempt can hang: each one
//! runs under a timeout.
//!
//! The helper knows nothing of storage: it is generic over an error that says whether it is
//! permanent ([`Retryable`], which `StorageError` implements), so storage depends on retry
//! and not the other way round.

use std::future::Future;
use std::time::Duration;

/// An error the retry helper can classify and wrap.
pub trait Retryable: std::fmt::Display + Sized {
    /// Whether retrying cannot help (retrying only delays a clear error).
    fn is_permanent(&self) -> bool;
    /// The error of an attempt that did not finish within `limit` (transient).
    fn timed_out(limit: Duration) -> Self;
    /// The error returned when `attempts` attempts all failed transiently, the last with
    /// `last`.
    fn gave_up(attempts: u32, last: Self) -> Self;
}

/// How storage calls are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, including the first (at least 1).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for every further one.
    pub base_delay: Duration,
    /// Upper bound for one delay.
    pub max_delay: Duration,
    /// Time limit of one attempt (one request, including its body).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            attempt_timeout: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based), before jitter.
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Runs `op` until it succeeds, fails permanently, or the policy's attempts are used up.
///
/// `what` names the operation in logs (never include secrets). Each attempt is bounded by
/// `attempt_timeout`; a timeout counts as a transient failure.
pub async fn retry<T, E, F, Fut>(policy: &RetryPolicy, what: &str, mut op: F) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let attempts = policy.max_attempts.max(1);
    let mut attempt = 1;
    loop {
        let result = match tokio::time::timeout(policy.attempt_timeout, op()).await {
            Ok(r) => r,
            Err(_) => Err(E::timed_out(policy.attempt_timeout)),
        };
        match result {
            Ok(v) => return Ok(v),
            Err(e) if e.is_permanent() || attempt >= attempts => {
                if attempt > 1 && !e.is_permanent() {
                    tracing::warn!("{what}: giving up after {attempt} attempts");
                    return Err(E::gave_up(attempt, e));
                }
                return Err(e);
            }
            Err(e) => {
                let delay = jitter(policy.delay(attempt));
                tracing::warn!(
                    "{what}: attempt {attempt}/{attempts} failed, retrying in {delay:?}: {e}"
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

/// Spreads retries of concurrent clients: 75% to 125% of the nominal delay.
fn jitter(d: Duration) -> Duration {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let pct = 75 + (nanos ^ std::process::id()) % 51;
    d * pct / 100
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    enum TestError {
        Transient,
        Permanent,
        TimedOut,
        GaveUp(u32, Box<TestError>),
    }

    impl std::fmt::Display for TestError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl Retryable for TestError {
        fn is_permanent(&self) -> bool {
            matches!(self, TestError::Permanent | TestError::GaveUp(..))
        }
        fn timed_out(_: Duration) -> Self {
            TestError::TimedOut
        }
        fn gave_up(attempts: u32, last: Self) -> Self {
            TestError::GaveUp(attempts, Box::new(last))
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            attempt_timeout: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn retries_transient_until_success() {
        let calls = AtomicU32::new(0);
        let r = retry(&fast(), "test", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(TestError::Transient)
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retry(&fast(), "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(TestError::Permanent)
        })
        .await;
        assert!(matches!(r, Err(TestError::Permanent)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn gives_up_after_the_bound() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retry(&fast(), "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(TestError::Transient)
        })
        .await;
        assert!(matches!(r, Err(TestError::GaveUp(4, _))));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn hung_attempts_time_out() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retry(&fast(), "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<(), TestError>>().await
        })
        .await;
        assert!(
            matches!(&r, Err(TestError::GaveUp(4, last)) if matches!(**last, TestError::TimedOut)),
            "{r:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..fast()
        };
        assert_eq!(p.delay(1), Duration::from_millis(100));
        assert_eq!(p.delay(2), Duration::from_millis(200));
        assert_eq!(p.delay(4), Duration::from_millis(800));
        assert_eq!(p.delay(5), Duration::from_secs(1));
        assert_eq!(p.delay(40), Duration::from_secs(1));
    }
}
