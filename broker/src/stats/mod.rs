//! What the broker knows about its instances between requests: node statistics sampled from
//! the cells, the latest snapshot of each instance, a bounded history of samples for charts,
//! the repositories' backups and windows, and the cells' load.
//!
//! Why a sampler and not a read per request: a page or a Prometheus scrape must not make the
//! broker ask every cell (and every archive) on the spot; one task asks at a fixed interval
//! with bounded concurrency and short timeouts, and everything else reads its results. A cell
//! that does not answer makes its nodes "unknown" and never blocks the others.
//!
//! This module holds what the sampler found and what readers read: the types, the handle
//! ([`Stats`], cheap to clone, shared through [`crate::AppState::stats`]) and the samples
//! file ([`store`]). The sampler itself (which talks to the cells) is [`crate::sampler`]; it
//! is apart so that the API can hold this handle without depending on the cells' client.

pub mod store;
mod types;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tracing::warn;

pub use store::{Retention, SampleStore, StoreError};
pub use types::*;

/// The samples file's name in `[stats] dir`.
pub const FILE_NAME: &str = "samples.redb";

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
    /// The samples file (none: no series, e.g. in unit tests).
    store: Option<SampleStore>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats").finish_non_exhaustive()
    }
}

impl Stats {
    /// A handle with nothing sampled yet and no samples file (series are empty).
    pub fn new() -> Stats {
        Stats::default()
    }

    /// A handle whose series are kept in `store`.
    pub fn with_store(store: SampleStore) -> Stats {
        Stats {
            inner: Arc::new(Inner {
                store: Some(store),
                ..Inner::default()
            }),
        }
    }

    /// A handle over the samples file `[stats] dir`/[`FILE_NAME`] of `config`. When the file
    /// cannot be opened (its directory is not writable, another broker process on this machine
    /// holds it), the samples are kept in memory, with a warning: charts start empty after a
    /// restart then, but `serve` does not fail for them.
    pub fn open(config: &crate::config::BrokerConfig) -> Stats {
        let st = &config.stats;
        let path = st.dir(&config.router).join(FILE_NAME);
        let retention = Retention {
            full: st.full_retention.0,
            coarse_interval: st.coarse_interval.0,
            coarse: st.coarse_retention.0,
        };
        match SampleStore::open(&path, retention) {
            Ok(store) => Stats::with_store(store),
            Err(e) => {
                warn!(path = %path.display(), "{e}; the samples are kept in memory only");
                match SampleStore::in_memory(retention) {
                    Ok(store) => Stats::with_store(store),
                    Err(e) => {
                        warn!("{e}; no samples are kept");
                        Stats::new()
                    }
                }
            }
        }
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
    pub fn series(&self, id: &str, since: DateTime<Utc>) -> Vec<Sample> {
        let Some(store) = &self.inner.store else {
            return Vec::new();
        };
        store.series(id, since, Utc::now()).unwrap_or_else(|e| {
            warn!(instance = id, "cannot read samples: {e}");
            Vec::new()
        })
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

/// The sampler's side.
impl Stats {
    /// Publishes the latest snapshots of the instances sampled now, and forgets those of
    /// instances that are no longer sampled (`keep`: the ids still sampled).
    pub fn publish(&self, snapshots: Vec<InstanceSnapshot>, keep: &[String]) {
        let mut latest = self.inner.latest.write().unwrap_or_else(|e| e.into_inner());
        latest.retain(|id, _| keep.contains(id));
        for s in snapshots {
            latest.insert(s.instance_id.clone(), s);
        }
        drop(latest);
        self.inner
            .repositories
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| keep.contains(id));
    }

    /// Appends samples (instance id, sample) to the samples file.
    pub fn record(&self, samples: &[(String, Sample)]) {
        if let Some(store) = &self.inner.store {
            if let Err(e) = store.append(samples, Utc::now()) {
                warn!("cannot record samples: {e}");
            }
        }
    }

    /// Drops samples past the retention, of every instance.
    pub fn prune(&self) {
        if let Some(store) = &self.inner.store {
            if let Err(e) = store.prune(Utc::now()) {
                warn!("cannot prune samples: {e}");
            }
        }
    }

    /// Sets instance `id`'s repository facts.
    pub fn set_repository(&self, id: &str, r: RepositoryState) {
        self.inner
            .repositories
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), r);
    }

    /// Sets the cells' load.
    pub fn set_cells(&self, cells: Vec<CellLoad>) {
        *self.inner.cells.write().unwrap_or_else(|e| e.into_inner()) = cells;
    }

    /// The instances whose refresh was asked for since the last call.
    pub fn take_refresh(&self) -> Vec<String> {
        std::mem::take(&mut *self.inner.wanted.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until a refresh is asked for (at once when one was asked since the last wait).
    pub async fn refresh_asked(&self) {
        self.inner.wake.notified().await;
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(id: &str) -> InstanceSnapshot {
        InstanceSnapshot::unmeasured(id.into(), crate::state::Timestamp::now())
    }

    /// A refresh asked before the sampler waits is not lost, and asked twice is done once.
    #[tokio::test]
    async fn refreshes_wake_the_sampler_once_per_instance() {
        let stats = Stats::new();
        stats.refresh("a");
        stats.refresh("b");
        stats.refresh("a");
        tokio::time::timeout(std::time::Duration::from_secs(1), stats.refresh_asked())
            .await
            .expect("woken by the refreshes asked before");
        assert_eq!(stats.take_refresh(), ["a", "b"]);
        assert!(stats.take_refresh().is_empty());
    }

    /// Publishing replaces the snapshots and forgets instances no longer sampled (and their
    /// repository facts); without a samples file the series are empty.
    #[test]
    fn publish_forgets_instances_no_longer_sampled() {
        let stats = Stats::new();
        stats.publish(
            vec![snapshot("a"), snapshot("b")],
            &["a".into(), "b".into()],
        );
        stats.set_repository(
            "b",
            RepositoryState {
                backups: Vec::new(),
                window: None,
                computed_at: crate::state::Timestamp::now(),
                error: None,
            },
        );
        assert_eq!(stats.all_latest().len(), 2);
        assert!(stats.repository("b").is_some());
        stats.publish(vec![snapshot("a")], &["a".into()]);
        assert_eq!(
            stats
                .all_latest()
                .iter()
                .map(|s| s.instance_id.as_str())
                .collect::<Vec<_>>(),
            ["a"]
        );
        assert!(stats.latest("b").is_none() && stats.repository("b").is_none());
        assert!(stats
            .series("a", chrono::Utc::now() - chrono::Duration::hours(1))
            .is_empty());
    }
}
