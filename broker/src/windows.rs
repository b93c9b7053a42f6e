//! The restorable windows of instances' archives (design `docs/design/clones.md` §1.2, §2.2),
//! as the API (a clone's validation, `GET /v2/service_instances/:id`) and the
//! `restorable-window` command read them: computed with the core library
//! (`walarchive::window`) within a time budget, and kept a short while.
//!
//! Why a cache: computing a window lists the archive and reads its last segments; a platform
//! polling an instance, or a user retrying a clone, must not make the broker do that on every
//! request. A live instance's window moves with every archived segment, so it is kept
//! [`FRESH`]; a deleted one's archive is final and its window kept until the process ends (a
//! purge is seen in the records before the window is asked for).
//!
//! Why the leader's LSN here too: a clone "at 10:15" of an idle running source is its latest
//! state only if nothing after the archive's end was written yet; only the source's leader
//! knows (`CellClient::wal`), and it may not answer in time, in which case the caller resolves
//! without it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use walarchive::window::{self, Window};
use walarchive::Lsn;

use crate::config::BrokerConfig;
use crate::state::{InstanceRecord, ResolvedTarget, TargetSpec, Timestamp};

/// How long a live archive's window is reused.
pub const FRESH: Duration = Duration::from_secs(30);

/// A window and when it was computed.
#[derive(Clone, Debug)]
pub struct Computed {
    /// The window.
    pub window: Arc<Window>,
    /// When it was computed (the broker's clock).
    pub computed_at: DateTime<Utc>,
}

/// Why a window could not be had.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// The archive holds no completed base backup whose WAL is archived (or no archive at all).
    #[error("the archive has no completed base backup")]
    NoBackup,
    /// Not read within the budget, or a storage or corruption error (the text is for logs).
    #[error("{0}")]
    Unreadable(String),
}

struct Entry {
    at: Instant,
    computed: Computed,
    /// A deleted incarnation's archive: the window never changes.
    final_: bool,
}

/// Windows by repository URL.
#[derive(Default)]
pub struct Windows {
    entries: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for Windows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Windows").finish_non_exhaustive()
    }
}

impl Windows {
    /// The window of the archive at `url` (`final_`: a deleted incarnation's), from the cache
    /// or computed within `budget`.
    pub async fn get(
        &self,
        config: &BrokerConfig,
        url: &str,
        final_: bool,
        budget: Duration,
    ) -> Result<Computed, WindowError> {
        if let Some(c) = self.cached(url, final_) {
            return Ok(c);
        }
        let computed = compute(config, url, budget).await?;
        let mut entries = self.entries.lock().expect("not poisoned");
        entries.retain(|_, e| e.final_ || e.at.elapsed() < FRESH);
        entries.insert(
            url.to_string(),
            Entry {
                at: Instant::now(),
                computed: computed.clone(),
                final_,
            },
        );
        Ok(computed)
    }

    /// A cached window of `url`: a final one always; a live one while fresh, and never for a
    /// `final_` request (the source was deleted since: its archive grew up to its final WAL).
    fn cached(&self, url: &str, final_: bool) -> Option<Computed> {
        let entries = self.entries.lock().expect("not poisoned");
        entries
            .get(url)
            .filter(|e| e.final_ || (!final_ && e.at.elapsed() < FRESH))
            .map(|e| e.computed.clone())
    }
}

/// Computes the window of the archive at `url` within `budget`, without the cache.
pub async fn compute(
    config: &BrokerConfig,
    url: &str,
    budget: Duration,
) -> Result<Computed, WindowError> {
    let repo = crate::archive::open(config, url).map_err(unreadable)?;
    let computed_at = Utc::now();
    match tokio::time::timeout(budget, window::compute(&repo)).await {
        Ok(Ok(w)) => Ok(Computed {
            window: Arc::new(w),
            computed_at,
        }),
        Ok(Err(window::Error::NoBackup)) => Err(WindowError::NoBackup),
        Ok(Err(window::Error::Core(walarchive::Error::NoRepository { .. }))) => {
            Err(WindowError::NoBackup)
        }
        Ok(Err(e)) => Err(unreadable(e)),
        Err(_) => Err(WindowError::Unreadable(format!(
            "not read within {} s",
            budget.as_secs_f64()
        ))),
    }
}

fn unreadable(e: impl std::fmt::Display) -> WindowError {
    WindowError::Unreadable(e.to_string())
}

/// Reads the current WAL position (`pg_current_wal_lsn()`) of an instance's leader, through
/// its cell (the cells' binder implements it: `crate::cell::CellBinder`). A trait, so that the
/// API does not depend on the cells' client, which depends on the API's `Binder`.
pub trait LeaderWal: Send + Sync + 'static {
    /// The leader's current LSN; `None` when no node answers as the leader.
    fn current_lsn<'a>(
        &'a self,
        inst: &'a InstanceRecord,
    ) -> Pin<Box<dyn Future<Output = Option<Lsn>> + Send + 'a>>;
}

/// [`LeaderWal::current_lsn`] of `inst` within `budget` (`None` beyond it).
pub async fn leader_lsn(
    wal: &dyn LeaderWal,
    inst: &InstanceRecord,
    budget: Duration,
) -> Option<Lsn> {
    tokio::time::timeout(budget, wal.current_lsn(inst))
        .await
        .ok()
        .flatten()
}

/// What the instance record keeps of a resolution: times as RFC 3339 UTC to the microsecond
/// (what the cell's bootstrap spec takes, exactly), LSNs as walarchive prints them. One
/// function for the API (a clone, resolved at its 202) and the worker (a recovery).
pub fn resolved_target(r: &window::Resolved) -> ResolvedTarget {
    ResolvedTarget {
        backup: r.backup.clone(),
        timeline: r.timeline,
        target: match &r.recovery {
            window::Setting::Time(t) => {
                TargetSpec::Time(t.to_rfc3339_opts(SecondsFormat::Micros, true))
            }
            window::Setting::Lsn(l) => TargetSpec::Lsn(l.to_string()),
        },
        expect_lsn: r.expect.lsn.to_string(),
        expect_time: r.expect.time.map(Timestamp),
    }
}

/// A time as the broker's texts give them (API answers, operation descriptions): RFC 3339
/// in UTC, to the millisecond, without a fraction when it is whole (`2026-12-07T10:15:00Z`,
/// `2026-12-07T10:14:59.81Z`).
pub fn time_text(t: DateTime<Utc>) -> String {
    let s = t.to_rfc3339_opts(SecondsFormat::Millis, true);
    match s.strip_suffix('Z').and_then(|s| s.split_once('.')) {
        Some((whole, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                format!("{whole}Z")
            } else {
                format!("{whole}.{frac}Z")
            }
        }
        None => s,
    }
}
