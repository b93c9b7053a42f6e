//! The sampler: a task of `walarchive-broker serve` that every `[stats] sample_interval` asks
//! the cells for the statistics of every running instance's nodes and publishes what it found
//! through [`crate::stats::Stats`] (the latest snapshots in memory, a sample per instance in
//! the samples file), reads the instances' repositories every `repository_interval` (and in
//! the next round after the record changed: a backup completed, an operation ended), and the
//! cells' load.
//!
//! Why here and not in `stats`: this is the part that talks to the cells (their client
//! depends on the API's binder types); `stats` stays plain data the API can hold. Every call
//! to a cell has a short timeout and at most `concurrency` run at once: a cell that does not
//! answer makes its nodes "unknown" in this round and never delays the others beyond its
//! timeout. Counters become rates here (`derive`), against the previous round's counters,
//! which only this task keeps.

mod derive;
mod repository;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tracing::{debug, warn};

use crate::cell::{CellClient, ClientError};
use crate::config::BrokerConfig;
use crate::state::{InstanceRecord, InstanceState, Store, Timestamp};
use crate::stats::{CellLoad, Stats};
use derive::NodeAnswer;
pub use derive::{archive_state, increase, rates, Counters};

/// How often samples past their retention are dropped (of instances no longer sampled too).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

struct Cell {
    zone: String,
    host: String,
    client: CellClient,
}

/// Asks a node's cell for its statistics within `timeout`.
async fn ask(
    id: String,
    name: String,
    client: Option<CellClient>,
    timeout: Duration,
) -> ((String, String), NodeAnswer) {
    let answer = match client {
        None => Err("its cell is not configured".to_string()),
        Some(c) => match tokio::time::timeout(timeout, c.node_stats(&name, timeout)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        },
    };
    if let Err(e) = &answer {
        debug!(instance = %id, node = %name, "no statistics: {e}");
    }
    ((id, name), answer)
}

/// The sampling task's state.
pub struct Sampler {
    config: Arc<BrokerConfig>,
    store: Store,
    stats: Stats,
    cells: BTreeMap<String, Cell>,
    /// The leader's counters at the previous round, by instance.
    counters: HashMap<String, Counters>,
    /// When each instance's repository was last read, and the record's last backup and last
    /// change then (a change, e.g. a backup completed, has it read again at once).
    repository_read: HashMap<String, (Instant, RecordMark)>,
    /// Repository readings in flight (at most `concurrency`).
    readings: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("cells", &self.cells.len())
            .finish_non_exhaustive()
    }
}

/// What of an instance record has its repository read again: its last backup and last change.
type RecordMark = (Option<Timestamp>, Timestamp);

/// Whether an instance's repository is read in this round: never read, read `interval` ago,
/// or its record changed since.
fn repository_due(
    last: Option<&(Instant, RecordMark)>,
    mark: &RecordMark,
    interval: Duration,
) -> bool {
    last.is_none_or(|(t, m)| t.elapsed() >= interval || m != mark)
}

/// Whether the sampler asks for an instance's nodes: its cluster runs (also during an update,
/// and after a failed update or backup, when it may still serve).
fn sampled(i: &InstanceRecord) -> bool {
    matches!(
        i.state,
        InstanceState::Ready | InstanceState::Updating | InstanceState::Failed
    ) && i.deleted_at.is_none()
        && i.nodes.iter().any(|n| n.pg_port != 0)
}

impl Sampler {
    /// A sampler for `config`'s cells over `store`, publishing through `stats`.
    pub fn new(
        config: Arc<BrokerConfig>,
        store: Store,
        stats: Stats,
    ) -> Result<Sampler, ClientError> {
        let cells = config
            .cells
            .iter()
            .map(|c| {
                Ok((
                    c.name.clone(),
                    Cell {
                        zone: c.zone.clone(),
                        host: c.node_host(),
                        client: CellClient::new(&c.url, c.token.clone(), config.tls.as_ref())?,
                    },
                ))
            })
            .collect::<Result<_, ClientError>>()?;
        let readings = Arc::new(tokio::sync::Semaphore::new(config.stats.concurrency));
        Ok(Sampler {
            config,
            store,
            stats,
            cells,
            counters: HashMap::new(),
            repository_read: HashMap::new(),
            readings,
        })
    }

    /// Samples until `stop` completes: a round at once, then one per `sample_interval`, and
    /// one whenever [`Stats::refresh`] is asked for.
    pub async fn run(mut self, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut pruned = Instant::now();
        let mut forced = Vec::new();
        loop {
            self.round(&forced).await;
            if pruned.elapsed() >= PRUNE_EVERY {
                let stats = self.stats.clone();
                let _ = tokio::task::spawn_blocking(move || stats.prune()).await;
                pruned = Instant::now();
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.stats.sample_interval.0) => forced = Vec::new(),
                _ = self.stats.refresh_asked() => forced = self.stats.take_refresh(),
                _ = &mut stop => return,
            }
        }
    }

    /// One round: every sampled instance's nodes, the cells' load, and the repositories due
    /// (or `forced`).
    pub async fn round(&mut self, forced: &[String]) {
        let instances: Vec<InstanceRecord> = match self.store.instances().await {
            Ok(v) => v.into_iter().map(|v| v.value).collect(),
            Err(e) => {
                warn!("the sampler cannot read the instances: {e}");
                return;
            }
        };
        let cells = self.cell_loads(&instances).await;
        self.stats.set_cells(cells);
        let live: Vec<&InstanceRecord> = instances.iter().filter(|i| sampled(i)).collect();
        let timeout = self.config.stats.cell_timeout.0;
        let jobs: Vec<(String, String, Option<CellClient>)> = live
            .iter()
            .flat_map(|i| i.nodes.iter().map(move |n| (i, n)))
            .filter(|(_, n)| n.pg_port != 0)
            .map(|(i, n)| {
                let client = self.cells.get(&n.cell).map(|c| c.client.clone());
                (i.id.clone(), n.name.clone(), client)
            })
            .collect();
        let answers: HashMap<(String, String), NodeAnswer> = futures::stream::iter(jobs)
            .map(|(id, name, client)| ask(id, name, client, timeout))
            .buffer_unordered(self.config.stats.concurrency)
            .collect()
            .await;
        let now = chrono::Utc::now();
        let mut snapshots = Vec::new();
        let mut samples = Vec::new();
        for i in &live {
            let previous = self.stats.latest(&i.id);
            let nodes = i
                .nodes
                .iter()
                .map(|p| {
                    let host = self
                        .cells
                        .get(&p.cell)
                        .map(|c| c.host.clone())
                        .unwrap_or_default();
                    let answer = answers
                        .get(&(i.id.clone(), p.name.clone()))
                        .cloned()
                        .unwrap_or_else(|| Err("not created yet".into()));
                    (p, host, answer)
                })
                .collect();
            let (snap, counters) = derive::snapshot(derive::Inputs {
                instance_id: &i.id,
                at: now,
                nodes,
                previous: previous.as_ref(),
                counters: self.counters.get(&i.id),
            });
            match counters {
                Some(c) => self.counters.insert(i.id.clone(), c),
                None => self.counters.remove(&i.id),
            };
            samples.push((i.id.clone(), derive::sample(&snap)));
            snapshots.push(snap);
        }
        let keep: Vec<String> = live.iter().map(|i| i.id.clone()).collect();
        self.counters.retain(|id, _| keep.contains(id));
        self.repository_read.retain(|id, _| keep.contains(id));
        self.stats.publish(snapshots, &keep);
        let stats = self.stats.clone();
        let _ = tokio::task::spawn_blocking(move || stats.record(&samples)).await;
        for i in live {
            let mark = (i.last_backup_at, i.updated_at);
            let due = repository_due(
                self.repository_read.get(&i.id),
                &mark,
                self.config.stats.repository_interval.0,
            );
            if due || forced.contains(&i.id) {
                self.repository_read
                    .insert(i.id.clone(), (Instant::now(), mark));
                self.read_repository(i.clone());
            }
        }
    }

    /// Reads `inst`'s repository in a task of its own (a slow archive does not hold up the
    /// rounds), at most `concurrency` at once.
    fn read_repository(&self, inst: InstanceRecord) {
        let (config, stats, sem, store) = (
            self.config.clone(),
            self.stats.clone(),
            self.readings.clone(),
            self.store.clone(),
        );
        tokio::spawn(async move {
            let Ok(_permit) = sem.acquire_owned().await else {
                return;
            };
            let mut r = repository::read(&config, &inst).await;
            // Which node took each backup: the broker's backup log (the manifests do not say).
            match store.backup_log(&inst.id).await {
                Ok(log) => repository::name_nodes(&mut r, &log),
                Err(e) => warn!(instance = %inst.id, "cannot read the backup log: {e}"),
            }
            stats.set_repository(&inst.id, r);
        });
    }

    /// Every configured cell's load: its nodes in the records, and its answer to `GET /v1/cell`.
    async fn cell_loads(&self, instances: &[InstanceRecord]) -> Vec<CellLoad> {
        let timeout = self.config.stats.cell_timeout.0;
        let asks = self.cells.iter().map(|(name, c)| async move {
            let report = tokio::time::timeout(timeout, c.client.report()).await;
            let nodes = instances
                .iter()
                .filter(|i| i.deleted_at.is_none())
                .flat_map(|i| i.nodes.iter())
                .filter(|n| n.cell == *name)
                .count() as u32;
            let (up, free_ports, majors) = match report {
                Ok(Ok(r)) => (
                    true,
                    r.free_ports,
                    r.majors.keys().filter_map(|m| m.parse().ok()).collect(),
                ),
                _ => (false, None, Vec::new()),
            };
            CellLoad {
                name: name.clone(),
                zone: c.zone.clone(),
                up,
                nodes,
                free_ports,
                majors,
            }
        });
        futures::future::join_all(asks).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_is_read_when_due_or_when_its_record_changed() {
        let hour = Duration::from_secs(3600);
        let t = Timestamp::now();
        let mark: RecordMark = (None, t);
        assert!(repository_due(None, &mark, hour));
        let read = (Instant::now(), mark);
        assert!(!repository_due(Some(&read), &mark, hour));
        assert!(repository_due(Some(&read), &mark, Duration::ZERO));
        // A backup completed, or an operation ended, since.
        assert!(repository_due(Some(&read), &(Some(t), t), hour));
        let later = Timestamp(t.0 + chrono::Duration::seconds(1));
        assert!(repository_due(Some(&read), &(None, later), hour));
    }
}
