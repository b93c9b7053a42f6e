//! The one compare-and-swap retry loop of the broker.
//!
//! Every decision is written by compare-and-swap against the revision it was read at; losing
//! the race means another writer decided first, so the caller reads again and decides again
//! (never overwrites). Each such loop (the store's transitions, claims and resealing, the
//! API's provision, update and deprovision) runs through [`until_swapped`], so that they all
//! give up after the same number of lost races.
//!
//! Why a state passed from round to round rather than a closure that borrows it: the rounds
//! run in `Send` futures (axum handlers, spawned worker tasks), and a future that borrows
//! from its own closure (an `async FnMut`) is not provably `Send` in today's Rust.

use std::future::Future;

/// How many rounds (read, decide, compare-and-swap) a caller gets before it gives up with its
/// contention error. Each lost round means another writer's decision went through, so even
/// a busy instance settles in a few rounds; 32 leaves room for bursts of concurrent requests
/// and workers while keeping a hopeless caller's etcd traffic bounded.
pub const CAS_ATTEMPTS: usize = 32;

/// The end of one round of [`until_swapped`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round<T, S = ()> {
    /// Decided: swapped, or nothing (more) to write.
    Done(T),
    /// Lost the race: read again, with this state.
    Lost(S),
}

/// Runs `round` (starting from `state`) until it returns [`Round::Done`] or an error, at most
/// [`CAS_ATTEMPTS`] times; a lost round hands its state to the next one. `Ok(None)` when
/// every round lost: the caller answers with its contention error.
pub async fn until_swapped<S, T, E, F, Fut>(mut state: S, mut round: F) -> Result<Option<T>, E>
where
    F: FnMut(S) -> Fut,
    Fut: Future<Output = Result<Round<T, S>, E>>,
{
    for _ in 0..CAS_ATTEMPTS {
        match round(state).await? {
            Round::Done(done) => return Ok(Some(done)),
            Round::Lost(next) => state = next,
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_lost_rounds_until_decided_or_out_of_attempts() {
        let r: Result<_, ()> = until_swapped(1, |n| async move {
            Ok(if n == 3 {
                Round::Done(n)
            } else {
                Round::Lost(n + 1)
            })
        })
        .await;
        assert_eq!(r, Ok(Some(3)));

        let r: Result<Option<()>, ()> =
            until_swapped(0, |n| async move { Ok(Round::Lost(n + 1)) }).await;
        assert_eq!(r, Ok(None));
        let mut rounds = 0;
        let r: Result<Option<()>, ()> = until_swapped((), |()| {
            rounds += 1;
            async { Ok(Round::Lost(())) }
        })
        .await;
        assert_eq!((r, rounds), (Ok(None), CAS_ATTEMPTS));

        let r: Result<Option<()>, &str> =
            until_swapped((), |()| async { Err("etcd is down") }).await;
        assert_eq!(r, Err("etcd is down"));
    }
}
