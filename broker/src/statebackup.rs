//! The broker's own state, backed up to a second store (`[state_backup]`, design §4.1).
//!
//! Why: etcd is the only place that knows which instances exist, their ports, their
//! bindings' credentials and where their archives are. The archives survive the loss of every
//! cell; without a copy of etcd's records, nobody could say whose they are. So every change
//! under the broker's prefix is written, as a whole, to a store of its own (not under
//! `repository.base`, with credentials of its own), within `min_interval`.
//!
//! A snapshot is every key under the prefix read at one etcd revision, except `claims/`
//! (workers' leases, meaningless after a restore) and Patroni's namespace when it lies under
//! the prefix (the clusters' live DCS state changes every `loop_wait` and is rebuilt by
//! Patroni; including it would write a snapshot every `min_interval` forever):
//!
//! ```json
//! {"format": 1, "revision": 1234, "written_at": "2026-12-07T10:15:00Z",
//!  "prefix": "/walarchive-broker", "keys": [{"key": "/walarchive-broker/instances/x", "value_b64": "..."}]}
//! ```
//!
//! sealed whole with the broker's keyring (`Keyring::seal("state-snapshot", json)`: the text
//! `wa1:<key id>:<nonce and ciphertext, base64url>`, ChaCha20-Poly1305), stored create-only
//! as `snapshots/<revision, 20 digits>.sealed`. Values that are secrets are sealed per record
//! already (bound to their key), so restoring means writing each `key` back with its value
//! unchanged. The sealing key is `[secrets]`'s, kept in neither store.
//!
//! Change detection compares the records read with those of the last snapshot (not etcd's
//! revision, which every claim renewal and Patroni heartbeat moves): a broker restarted with
//! unchanged state writes nothing. Two brokers on one etcd may both write; a snapshot of the
//! same revision already there is simply kept (create-only).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{debug, info, warn};
use walarchive::storage::StorageError;
use walarchive::RetryPolicy;

use crate::config::{BrokerConfig, StateBackupConfig};
use crate::etcd::EtcdError;
use crate::secrets::{Keyring, SecretsError};
use crate::state::{Store, StoreError};

/// The snapshot format this broker writes and reads.
pub const FORMAT: u32 = 1;
/// The purpose (associated data) a snapshot is sealed for.
pub const PURPOSE: &str = "state-snapshot";
/// Days for which the newest snapshot of each day is kept beyond `keep`.
pub const DAILY_DAYS: i64 = 30;

/// One snapshot of the broker's state (the plaintext of a sealed object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// [`FORMAT`].
    pub format: u32,
    /// The etcd revision the keys were read at.
    pub revision: i64,
    /// When the snapshot was taken.
    pub written_at: DateTime<Utc>,
    /// The broker's etcd prefix (`etcd.prefix`).
    pub prefix: String,
    /// Every key, in key order.
    pub keys: Vec<SnapshotKey>,
}

/// One key of a [`Snapshot`]: its full etcd key and its value as stored (sealed values stay
/// sealed).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotKey {
    /// The key, prefix included.
    pub key: String,
    /// The value, base64.
    pub value_b64: String,
}

impl std::fmt::Debug for SnapshotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotKey")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A snapshot object as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    /// Its revision.
    pub revision: i64,
    /// Its object name (relative to the store's URL).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// When the store received it.
    pub stored_at: DateTime<Utc>,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// The newest snapshot's object name.
    pub name: String,
    /// Its revision.
    pub revision: i64,
    /// When it was taken.
    pub written_at: DateTime<Utc>,
    /// Its age in seconds.
    pub age_seconds: i64,
    /// Records decoded, by kind (`instances`, `bindings`, ...).
    pub records: BTreeMap<String, usize>,
    /// etcd's revision now.
    pub etcd_revision: i64,
    /// Keys added, changed or removed in etcd since the snapshot (what a restore would lose).
    pub changed_keys: usize,
}

/// Errors of the state backup. Messages never hold a key, a value or a credential.
#[derive(Debug, thiserror::Error)]
pub enum StateBackupError {
    /// The store cannot be opened (its configuration file, its URL).
    #[error("state_backup: {0}")]
    Open(String),
    /// The store failed.
    #[error("state backup store: {what}: {source}")]
    Storage {
        /// What was done (`list snapshots/`, `get snapshots/...`).
        what: String,
        /// The error.
        #[source]
        source: StorageError,
    },
    /// etcd failed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The store holds no snapshot.
    #[error("no snapshot in {0}")]
    NoSnapshot(String),
    /// A snapshot does not open with this broker's keys.
    #[error("{name}: {reason}")]
    Sealed {
        /// The object.
        name: String,
        /// Why.
        reason: SecretsError,
    },
    /// A snapshot opens but is not one of this format.
    #[error("{name}: not a state snapshot of format {FORMAT}: {message}")]
    Format {
        /// The object.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A record of the snapshot does not decode.
    #[error("{name}: {source}")]
    Record {
        /// The object.
        name: String,
        /// The record's error.
        #[source]
        source: StoreError,
    },
}

/// The state backup: reads the broker's records from etcd and keeps sealed snapshots of them.
pub struct StateBackup {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
    policy: RetryPolicy,
    state: Store,
    keyring: Arc<Keyring>,
    /// Key prefixes left out of snapshots.
    exclude: Vec<String>,
    keep: u32,
    min_interval: Duration,
}

impl std::fmt::Debug for StateBackup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateBackup")
            .field("url", &self.url)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

fn object_name(revision: i64) -> String {
    format!("snapshots/{revision:020}.sealed")
}

/// The state backup's store, opened with `state_backup.walarchive_config` only (never the
/// broker's environment, which holds the archives' credentials), and its retry policy.
pub(crate) fn open_location(
    c: &StateBackupConfig,
) -> Result<(walarchive::storage::Location, RetryPolicy), StateBackupError> {
    let open = |e: String| StateBackupError::Open(e);
    let file = match &c.walarchive_config {
        Some(p) => walarchive::config::ConfigFile::load(p).map_err(|e| open(e.to_string()))?,
        None => Default::default(),
    };
    let policy = file
        .retry
        .apply(RetryPolicy::default())
        .map_err(|e| open(e.to_string()))?;
    let env = walarchive::storage::StorageEnv::new(
        [],
        std::env::var_os(walarchive::storage::unreliable::ENV),
    );
    let loc = walarchive::storage::open(&c.url, &file.storage, &env, &policy)
        .map_err(|e| open(e.to_string()))?;
    Ok((loc, policy))
}

fn revision_of(name: &str) -> Option<i64> {
    let n = name.strip_prefix("snapshots/")?.strip_suffix(".sealed")?;
    (n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

impl StateBackup {
    /// The state backup of `config` over `state` (the broker's store), `None` without
    /// `[state_backup]`. The store's credentials come from `state_backup.walarchive_config`
    /// only, never from the broker's environment (which holds the archives').
    pub fn open(
        config: &BrokerConfig,
        state: Store,
    ) -> Result<Option<StateBackup>, StateBackupError> {
        let Some(c) = &config.state_backup else {
            return Ok(None);
        };
        Self::open_with(c, config, state).map(Some)
    }

    fn open_with(
        c: &StateBackupConfig,
        config: &BrokerConfig,
        state: Store,
    ) -> Result<StateBackup, StateBackupError> {
        let (loc, policy) = open_location(c)?;
        let prefix = state.prefix().to_string();
        let mut exclude = vec![format!("{prefix}/claims/")];
        let patroni = config.patroni_namespace();
        if patroni.starts_with(&format!("{prefix}/")) {
            exclude.push(patroni);
        }
        Ok(StateBackup {
            store: loc.store,
            root: loc.prefix,
            url: c.url.clone(),
            policy,
            keyring: config.keyring(),
            state,
            exclude,
            keep: c.keep,
            min_interval: c.min_interval.0,
        })
    }

    /// The store's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, name: &str) -> Path {
        Path::from_iter(self.root.parts().chain(Path::from(name).parts()))
    }

    fn storage(what: String) -> impl FnOnce(StorageError) -> StateBackupError {
        move |source| StateBackupError::Storage { what, source }
    }

    /// Every key under the prefix but the excluded ones, read at one revision.
    pub async fn read_state(&self) -> Result<Snapshot, StateBackupError> {
        let prefix = format!("{}/", self.state.prefix());
        let (kvs, revision) = self.state.etcd().get_prefix_at(prefix.as_bytes()).await?;
        let keys = kvs
            .into_iter()
            .map(|kv| SnapshotKey {
                key: kv.key_str(),
                value_b64: B64.encode(&kv.value),
            })
            .filter(|k| !self.exclude.iter().any(|x| k.key.starts_with(x.as_str())))
            .collect();
        Ok(Snapshot {
            format: FORMAT,
            revision,
            written_at: Utc::now(),
            prefix: self.state.prefix().to_string(),
            keys,
        })
    }

    /// The snapshots in the store, oldest first.
    pub async fn list(&self) -> Result<Vec<Listed>, StateBackupError> {
        let dir = self.path("snapshots");
        let root_parts = self.root.parts().count();
        let store = self.store.clone();
        let metas = walarchive::retry::retry(&self.policy, "list snapshots/", || {
            let (store, dir) = (store.clone(), dir.clone());
            async move {
                store
                    .list(Some(&dir))
                    .try_collect::<Vec<_>>()
                    .await
                    .map_err(StorageError::from)
            }
        })
        .await
        .map_err(Self::storage("list snapshots/".into()))?;
        let mut out: Vec<Listed> = metas
            .into_iter()
            .filter_map(|m| {
                let name = m
                    .location
                    .parts()
                    .skip(root_parts)
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/");
                Some(Listed {
                    revision: revision_of(&name)?,
                    name,
                    size: m.size,
                    stored_at: m.last_modified,
                })
            })
            .collect();
        out.sort_by_key(|l| l.revision);
        Ok(out)
    }

    /// Seals `snapshot` and stores it (create-only); its object name. A snapshot of that
    /// revision already stored (by another broker) is kept as it is.
    pub async fn write(&self, snapshot: &Snapshot) -> Result<String, StateBackupError> {
        let name = object_name(snapshot.revision);
        let plain = serde_json::to_vec(snapshot).expect("JSON");
        let sealed = self.keyring.seal(PURPOSE, &plain);
        let payload = PutPayload::from(sealed.into_bytes());
        let key = self.path(&name);
        let store = self.store.clone();
        let r = walarchive::retry::retry(&self.policy, &format!("put {name}"), || {
            let (store, key, payload) = (store.clone(), key.clone(), payload.clone());
            async move {
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                store
                    .put_opts(&key, payload, opts)
                    .await
                    .map(|_| ())
                    .map_err(StorageError::from)
            }
        })
        .await;
        match r {
            Ok(()) | Err(StorageError::AlreadyExists) => Ok(name),
            Err(e) => Err(Self::storage(format!("put {name}"))(e)),
        }
    }

    /// Reads and opens the snapshot `name` (an object name as [`StateBackup::list`] gives).
    pub async fn load(&self, name: &str) -> Result<Snapshot, StateBackupError> {
        let key = self.path(name);
        let store = self.store.clone();
        let bytes = walarchive::retry::retry(&self.policy, &format!("get {name}"), || {
            let (store, key) = (store.clone(), key.clone());
            async move {
                let r = store.get(&key).await.map_err(StorageError::from)?;
                r.bytes().await.map_err(StorageError::from)
            }
        })
        .await
        .map_err(Self::storage(format!("get {name}")))?;
        let sealed = std::str::from_utf8(&bytes).map_err(|_| StateBackupError::Sealed {
            name: name.into(),
            reason: SecretsError::Malformed,
        })?;
        let (plain, _) = self
            .keyring
            .open(PURPOSE, sealed.trim_end())
            .map_err(|reason| StateBackupError::Sealed {
                name: name.into(),
                reason,
            })?;
        let format = |message: String| StateBackupError::Format {
            name: name.into(),
            message,
        };
        let snap: Snapshot = serde_json::from_slice(&plain).map_err(|e| format(e.to_string()))?;
        if snap.format != FORMAT {
            return Err(format(format!("format {}", snap.format)));
        }
        if revision_of(name) != Some(snap.revision) {
            return Err(format(format!(
                "it holds revision {}, not the one of its name",
                snap.revision
            )));
        }
        Ok(snap)
    }

    /// Decodes every record of `snapshot` as the broker reads it (`state::model`, sealed
    /// secrets opened); the records by kind.
    pub fn check(
        &self,
        name: &str,
        snapshot: &Snapshot,
    ) -> Result<BTreeMap<String, usize>, StateBackupError> {
        let bad = |source: StoreError| StateBackupError::Record {
            name: name.into(),
            source,
        };
        if snapshot.prefix != self.state.prefix() {
            return Err(StateBackupError::Format {
                name: name.into(),
                message: format!(
                    "taken under the prefix {}, not etcd.prefix {}",
                    snapshot.prefix,
                    self.state.prefix()
                ),
            });
        }
        let mut kinds = BTreeMap::new();
        for k in &snapshot.keys {
            let value = B64.decode(&k.value_b64).map_err(|e| {
                bad(StoreError::Corrupt {
                    key: k.key.clone(),
                    message: format!("value_b64: {e}"),
                })
            })?;
            let kind = self.state.check_record(&k.key, &value).map_err(bad)?;
            *kinds.entry(kind.to_string()).or_insert(0) += 1;
        }
        Ok(kinds)
    }

    /// Opens the newest snapshot, decodes every record, and compares it with etcd now.
    pub async fn verify(&self) -> Result<Verified, StateBackupError> {
        let newest = self
            .list()
            .await?
            .pop()
            .ok_or_else(|| StateBackupError::NoSnapshot(self.url.clone()))?;
        let snap = self.load(&newest.name).await?;
        let records = self.check(&newest.name, &snap)?;
        let now = self.read_state().await?;
        Ok(Verified {
            name: newest.name,
            revision: snap.revision,
            written_at: snap.written_at,
            age_seconds: (Utc::now() - snap.written_at).num_seconds(),
            records,
            etcd_revision: now.revision,
            changed_keys: changed_keys(&snap.keys, &now.keys),
        })
    }

    /// Deletes the snapshots beyond the newest `keep`, but for the newest of each of the last
    /// [`DAILY_DAYS`] days; how many were deleted.
    pub async fn prune(&self) -> Result<usize, StateBackupError> {
        let listed = self.list().await?;
        let doomed = prunable(&listed, self.keep as usize, Utc::now());
        for name in &doomed {
            let key = self.path(name);
            let store = self.store.clone();
            let r = walarchive::retry::retry(&self.policy, &format!("delete {name}"), || {
                let (store, key) = (store.clone(), key.clone());
                async move { store.delete(&key).await.map_err(StorageError::from) }
            })
            .await;
            match r {
                Ok(()) | Err(StorageError::NotFound) => {}
                Err(e) => return Err(Self::storage(format!("delete {name}"))(e)),
            }
        }
        Ok(doomed.len())
    }

    /// The keys of the newest snapshot that opens, to compare the first read with.
    async fn newest_keys(&self) -> Option<Vec<SnapshotKey>> {
        let newest = match self.list().await {
            Ok(mut l) => l.pop()?,
            Err(e) => {
                warn!("state backup: {e}");
                return None;
            }
        };
        match self.load(&newest.name).await {
            Ok(s) => Some(s.keys),
            Err(e) => {
                warn!("state backup: the newest snapshot does not open ({e}); writing a new one");
                None
            }
        }
    }

    /// Runs until `shutdown`: woken by `wake` (the API's changes) and every `poll`, writes a
    /// snapshot when the records changed since the last one (at most one per
    /// `min_interval`), then prunes.
    pub async fn run(self, wake: Arc<Notify>, poll: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        info!(url = %self.url, keep = self.keep, "state backup started");
        let mut last: Option<Vec<SnapshotKey>> = self.newest_keys().await;
        let mut written: Option<Instant> = None;
        loop {
            if let Some(t) = written {
                let next = t + self.min_interval;
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep_until(next.into()) => {}
                }
            }
            match self.read_state().await {
                Ok(snap) if last.as_ref() == Some(&snap.keys) => {}
                Ok(snap) => match self.write(&snap).await {
                    Ok(name) => {
                        debug!(
                            revision = snap.revision,
                            keys = snap.keys.len(),
                            "state snapshot {name} written"
                        );
                        last = Some(snap.keys);
                        written = Some(Instant::now());
                        match self.prune().await {
                            Ok(0) => {}
                            Ok(n) => debug!("state backup: {n} old snapshots deleted"),
                            Err(e) => warn!("state backup: cannot prune: {e}"),
                        }
                    }
                    Err(e) => warn!("state backup: cannot write a snapshot: {e}"),
                },
                Err(e) => warn!("state backup: cannot read the state: {e}"),
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
        info!("state backup stopped");
    }
}

/// How many keys differ between `a` and `b` (both in key order): added, removed or changed.
fn changed_keys(a: &[SnapshotKey], b: &[SnapshotKey]) -> usize {
    let a: BTreeMap<&str, &str> = a
        .iter()
        .map(|k| (k.key.as_str(), k.value_b64.as_str()))
        .collect();
    let b: BTreeMap<&str, &str> = b
        .iter()
        .map(|k| (k.key.as_str(), k.value_b64.as_str()))
        .collect();
    let changed = a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).count();
    changed + b.keys().filter(|k| !a.contains_key(*k)).count()
}

/// Which of `listed` (oldest first) to delete: all but the newest `keep` and the newest of
/// each UTC day of the last [`DAILY_DAYS`] days.
fn prunable(listed: &[Listed], keep: usize, now: DateTime<Utc>) -> Vec<String> {
    let mut days = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, l) in listed.iter().rev().enumerate() {
        let recent = now - l.stored_at < chrono::Duration::days(DAILY_DAYS);
        let first_of_day = recent && days.insert(l.stored_at.date_naive());
        if i >= keep && !first_of_day {
            out.push(l.name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(revision: i64, stored_at: DateTime<Utc>) -> Listed {
        Listed {
            revision,
            name: object_name(revision),
            size: 1,
            stored_at,
        }
    }

    #[test]
    fn names_sort_by_revision_and_nothing_else_is_a_snapshot() {
        assert_eq!(object_name(42), "snapshots/00000000000000000042.sealed");
        assert_eq!(revision_of(&object_name(42)), Some(42));
        assert_eq!(revision_of("snapshots/42.sealed"), None);
        assert_eq!(revision_of("snapshots/0000000000000000004x.sealed"), None);
        assert_eq!(revision_of("other/00000000000000000042.sealed"), None);
    }

    #[test]
    fn pruning_keeps_the_newest_and_one_a_day() {
        let now: DateTime<Utc> = "2026-12-07T12:00:00Z".parse().unwrap();
        let h = chrono::Duration::hours;
        // Five today, one on each of the two days before, one 40 days ago.
        let mut l = vec![listed(1, now - chrono::Duration::days(40))];
        l.push(listed(2, now - h(48)));
        l.push(listed(3, now - h(47)));
        l.push(listed(4, now - h(24)));
        for r in 5..10 {
            l.push(listed(r, now - h(10 - r)));
        }
        let doomed = prunable(&l, 3, now);
        let revs: Vec<i64> = doomed.iter().filter_map(|n| revision_of(n)).collect();
        // Kept: 9, 8, 7 (newest three), 4 (newest of yesterday), 3 (of the day before).
        assert_eq!(revs, vec![6, 5, 2, 1]);
        assert!(prunable(&l, 100, now).is_empty());
    }

    #[test]
    fn changed_keys_counts_additions_removals_and_changes() {
        let k = |key: &str, v: &str| SnapshotKey {
            key: key.into(),
            value_b64: v.into(),
        };
        let a = vec![k("a", "1"), k("b", "1"), k("c", "1")];
        let b = vec![k("a", "1"), k("b", "2"), k("d", "1")];
        assert_eq!(changed_keys(&a, &a), 0);
        assert_eq!(changed_keys(&a, &b), 3);
    }
}
