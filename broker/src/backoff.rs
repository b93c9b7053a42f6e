//! Exponential backoff with jitter for the worker's failing steps, and [`retry`], the
//! broker's one retry loop (the binder's requests to a leader's cell).
//!
//! Why not retry every pass: a provision step that fails (a backup command, a cell that does
//! not answer) usually fails for a reason that lasts, and retrying it once a second for the
//! whole operation timeout ran one failing first backup 574 times in ten minutes, loading the
//! node, the store and the log for nothing. Waiting twice as long after each failure, up to a
//! bound, keeps the first retries quick (a blip) and the later ones rare; the jitter (each
//! delay is drawn between half and all of its nominal value) keeps the instances that failed
//! together (a store outage) from retrying together.
//!
//! (walarchive's own helper, `walarchive::retry`, retries storage requests within one command
//! and is typed on its storage errors; this one paces the passes of a broker operation over
//! minutes.)

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tracing::warn;

/// The delays between attempts of one failing step: `first`, doubling up to `max`, jittered.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    attempts: u32,
}

impl Backoff {
    /// A backoff starting at `first` and bounded by `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max: max.max(first),
            attempts: 0,
        }
    }

    /// How many failures were counted since the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The nominal delay after failure number `n` (1-based): `first * 2^(n-1)`, at most `max`.
    pub fn nominal(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }

    /// Counts a failure and returns the delay before the next attempt: between half and all
    /// of the nominal delay, never below `first`.
    pub fn failed(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        let nominal = self.nominal(self.attempts);
        let mut r = [0u8; 4];
        getrandom::fill(&mut r).expect("the OS random number generator");
        let unit = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
        nominal
            .mul_f64(0.5 + 0.5 * unit)
            .max(self.first.min(nominal))
    }

    /// Starts counting afresh (the step succeeded, or another step is failing now).
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

/// Runs `attempt` until it succeeds or `attempts` attempts (at least one) failed, waiting
/// `backoff`'s delays in between; each failure but the last is logged as `what` failing.
pub async fn retry<T, E, F, Fut>(
    mut backoff: Backoff,
    attempts: u32,
    what: &str,
    mut attempt: F,
) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if backoff.attempts() + 1 < attempts.max(1) => {
                let delay = backoff.failed();
                warn!(attempt = backoff.attempts(), error = %e, "{what} failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retry_stops_at_success_or_after_the_last_attempt() {
        let quick = || Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        for (attempts, fail, calls, ok) in [(3, 2, 3, true), (2, 2, 2, false), (0, 1, 1, false)] {
            let mut n = 0;
            let r = retry(quick(), attempts, "test", || {
                n += 1;
                let i = n;
                async move {
                    if i > fail {
                        Ok(i)
                    } else {
                        Err(format!("failure {i}"))
                    }
                }
            })
            .await;
            assert_eq!(
                (n, r.is_ok()),
                (calls, ok),
                "{attempts} attempts, {fail} failures"
            );
        }
    }

    #[test]
    fn doubles_up_to_the_bound_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let nominal: Vec<u64> = (1..=12).map(|n| b.nominal(n).as_secs()).collect();
        assert_eq!(nominal, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(b.nominal(1000), Duration::from_secs(300));
        let mut total = Duration::ZERO;
        for n in 1..=12 {
            let d = b.failed();
            let nom = b.nominal(n);
            assert!(
                d <= nom && d >= nom / 2 && d >= Duration::from_secs(1),
                "{n}: {d:?}"
            );
            total += d;
        }
        assert_eq!(b.attempts(), 12);
        // Twelve failures take many minutes, not twelve seconds.
        assert!(total >= Duration::from_secs(600), "{total:?}");
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(b.failed() <= Duration::from_secs(1));
    }
}
