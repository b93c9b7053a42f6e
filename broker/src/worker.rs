//! The provisioning worker: executes the operations the API records.
//!
//! Why it is built around re-running idempotent steps: a provision takes minutes, and the
//! broker may be restarted (or crash) at any point of it. Nothing the worker knows lives only
//! in memory. Each pass of an operation reads the instance and its operation from etcd,
//! compares the world (the cells' nodes, Patroni's view of them, the router) with what the
//! operation asks for, and does the next thing that is missing: generate the secrets (once,
//! create-if-absent), choose cells and record them *before* creating nodes there (so a
//! restarted worker, or a deprovision, finds every node it may have created), PUT the nodes
//! (the cell agent answers the same ports for the same spec), wait for Patroni, route, back
//! up. A new worker on the same etcd therefore resumes where the old one stopped.
//!
//! Every write goes through [`Store::transition`] or [`Store::finish_operation`], which fail
//! with [`StoreError::Superseded`] once a DELETE replaced the operation: the pass stops there
//! and the deprovision, which removes every node of the instance on every cell (recorded or
//! not), cleans up after it (OSB orphan mitigation).
//!
//! One operation task per instance at a time, several instances concurrently. Scheduled
//! backups (`worker/backups.rs`) run in tasks of their own, so that a long backup never
//! holds up an update or a deprovision (removing the nodes simply makes that backup fail).
//! Across broker processes sharing the etcd, a task first claims its instance
//! (`claims/<id>`, renewed while it works, lapsing when its worker dies), so two workers
//! never drive one instance; a restarted worker waits for its predecessor's claims to lapse
//! (at least 10 s).
//!
//! The worker also owns this broker host's HAProxy: it is started with the routes of every
//! instance recorded in etcd and re-applied on every pass, so a restarted broker keeps
//! routing and a HAProxy that died is started again.
//!
//! This file is the loop: the worker's state, the claims, and `drive`, which runs an
//! operation's passes until it finishes. The passes are in `passes`, and what they share in
//! rooms of their own: `placement` (where nodes go and their names), `nodes` (putting them on
//! their cells), `observe` (Patroni's view of them), `routing` (HAProxy), `repository` (is
//! a new instance's repository empty), `backups` (scheduled backups and retention) and
//! `purge` (deleted instances' archives, once `[repository] keep_deleted` has passed), and
//! `actions` (the dashboard's backups and switchovers, `crate::actions`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Notify};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

mod actions;
mod backups;
mod final_wal;
mod nodes;
mod observe;
mod passes;
mod placement;
mod purge;
mod rebind;
mod repository;
mod restore;
mod routing;
mod teardown;

pub use self::placement::node_name;
pub use self::routing::routes;
use crate::backoff::Backoff;
use crate::cell::CellClient;
use crate::config::BrokerConfig;
use crate::router::{Haproxy, RouterOptions};
use crate::secrets::Secret;
use crate::state::{
    ClaimKind, InstanceRecord, OperationKind, OperationRecord, Outcome, Store, StoreError,
};

/// Errors of the [`Worker`].
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A cell client cannot be built.
    #[error("cell {cell}: {source}")]
    Cell {
        /// The cell.
        cell: String,
        /// The error.
        #[source]
        source: crate::cell::ClientError,
    },
    /// An environment variable named in `repository.env` is not set.
    #[error("repository.env names {0}, which is not set in the broker's environment")]
    MissingEnv(String),
    /// A backup failed.
    #[error("backup of {instance}: {message}")]
    Backup {
        /// The instance.
        instance: String,
        /// What failed.
        message: String,
    },
}

/// How one pass of an operation ended (other than done).
///
/// Descriptions (`Fail`, `Pending`, `Retry`'s `state` and `what`) are shown to the platform's
/// user by `last_operation`: they say what happens in words that help that user, and never
/// hold paths, host names, cell names or internal errors, which go to the broker's log.
#[derive(Debug)]
enum Step {
    /// The operation is no longer current or no longer in progress: stop working on it.
    Stop(StoreError),
    /// Give up: the operation fails with this user-facing reason.
    Fail(String),
    /// Not there yet (progress description); look again in a second.
    Pending(String),
    /// A step failed: try again after a backoff ([`Backoff`]).
    Retry {
        /// Where the operation stands (e.g. "leader running"), if worth saying.
        state: Option<String>,
        /// What failed, for the user: "the first base backup failed".
        what: &'static str,
        /// The internal error, for the log only.
        detail: String,
    },
}

impl Step {
    fn retry(state: Option<String>, what: &'static str, detail: impl std::fmt::Display) -> Step {
        Step::Retry {
            state,
            what,
            detail: detail.to_string(),
        }
    }
}

/// The reason given for failures whose details are only for the operator.
const INTERNAL: &str =
    "The broker failed internally; the operator can find the details in its log.";

impl From<StoreError> for Step {
    fn from(e: StoreError) -> Step {
        match e {
            StoreError::Superseded { .. } | StoreError::Finished { .. } => Step::Stop(e),
            StoreError::Corrupt { .. } => {
                warn!("{e}");
                Step::Fail(INTERNAL.into())
            }
            other => Step::retry(None, "the broker's state store is unavailable", other),
        }
    }
}

/// One configured cell.
#[derive(Debug, Clone)]
struct CellInfo {
    name: String,
    zone: String,
    host: String,
    client: CellClient,
}

struct Inner {
    /// This worker's random id (the owner of its [`crate::state::Claim`]s).
    id: String,
    config: Arc<BrokerConfig>,
    store: Store,
    cells: Vec<CellInfo>,
    router: Mutex<Haproxy>,
    /// Storage credentials (and `WALARCHIVE_CONFIG`) for the nodes and for retention.
    storage_env: BTreeMap<String, Secret>,
    /// Per instance, held while this process takes one of its backups: a scheduled backup
    /// and one asked for on the dashboard never run at once (across processes the backup
    /// claim does it; within one, both hold the same claim).
    backup_locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// Executes provisions, updates and deprovisions recorded by the API, runs the scheduled
/// base backups with their retention, purges deleted instances' archives, and keeps this
/// host's HAProxy routing every instance.
pub struct Worker {
    inner: Arc<Inner>,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("cells", &self.inner.cells.len())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker for `config` over `store`, woken through `wake` (the API's
    /// [`crate::AppState::provisioner`]). Reads the storage credentials named by
    /// `repository.env` from the environment.
    pub fn new(
        config: Arc<BrokerConfig>,
        store: Store,
        wake: Arc<Notify>,
    ) -> Result<Worker, WorkerError> {
        let cells = config
            .cells
            .iter()
            .map(|c| {
                Ok(CellInfo {
                    name: c.name.clone(),
                    zone: c.zone.clone(),
                    host: c.node_host(),
                    client: CellClient::new(&c.url, c.token.clone(), config.tls.as_ref()).map_err(
                        |source| WorkerError::Cell {
                            cell: c.name.clone(),
                            source,
                        },
                    )?,
                })
            })
            .collect::<Result<Vec<_>, WorkerError>>()?;
        let mut storage_env = BTreeMap::new();
        for name in &config.repository.env {
            let v = std::env::var(name).map_err(|_| WorkerError::MissingEnv(name.clone()))?;
            storage_env.insert(name.clone(), Secret::new(v));
        }
        if let Some(path) = &config.repository.walarchive_config {
            storage_env.insert(
                "WALARCHIVE_CONFIG".into(),
                Secret::new(path.display().to_string()),
            );
        }
        let r = &config.router;
        let dir = r
            .haproxy_config
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| ".".into());
        if r.haproxy_config.file_name() != Some(std::ffi::OsStr::new("haproxy.cfg")) {
            warn!(path = %r.haproxy_config.display(),
                  "router.haproxy_config is not named haproxy.cfg; HAProxy's configuration is {}/haproxy.cfg",
                  dir.display());
        }
        let router = Haproxy::new(
            &r.haproxy_binary,
            dir,
            RouterOptions {
                bind_address: r.bind_address.clone(),
                outlive: r.outlive_broker,
                source: r.source_address.clone(),
                read_only_fallback: r.read_only_fallback
                    == crate::config::ReadOnlyFallback::Primary,
                read_only_max_lag: r.read_only_max_lag_bytes,
                ..RouterOptions::default()
            },
        );
        Ok(Worker {
            inner: Arc::new(Inner {
                id: crate::state::new_id(),
                config,
                store,
                cells,
                router: Mutex::new(router),
                storage_env,
                backup_locks: Default::default(),
            }),
            wake,
        })
    }

    /// Runs until `shutdown` completes: starts HAProxy with the recorded routes, then drives
    /// every operation in progress (woken by the API, and every `worker.poll_interval` for
    /// operations recorded by other broker processes) and runs the scheduled backups. When
    /// `shutdown` completes (or this future is dropped) the tasks are aborted, where they
    /// stand, and HAProxy is stopped; a new worker resumes them.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let inner = self.inner;
        let mut tasks: JoinSet<()> = JoinSet::new();
        // Task -> (instance, is a backup). Backups run beside operations (a long backup must
        // not hold up a deprovision), one of each kind per instance.
        let mut running: HashMap<tokio::task::Id, (String, bool)> = HashMap::new();
        let mut backup_retry: HashMap<String, Instant> = HashMap::new();
        // The purge sweep (`[repository] keep_deleted`): one at a time, beside the rest.
        let mut purge_next = Instant::now();
        let mut purge_task: Option<tokio::task::JoinHandle<()>> = None;
        let poll = inner.config.worker.poll_interval.0;
        info!(cells = inner.cells.len(), "provisioning worker started");
        loop {
            while let Some(r) = tasks.try_join_next_with_id() {
                let id = match &r {
                    Ok((id, ())) => *id,
                    Err(e) => {
                        if e.is_panic() {
                            warn!("a worker task panicked: {e}");
                        }
                        e.id()
                    }
                };
                running.remove(&id);
            }
            if let Err(e) = inner.sync_router().await {
                warn!("cannot update the router: {e}");
            }
            let busy = |backup: bool, running: &HashMap<tokio::task::Id, (String, bool)>| {
                running
                    .values()
                    .filter(|(_, b)| *b == backup)
                    .map(|(i, _)| i.clone())
                    .collect::<HashSet<String>>()
            };
            let busy_ops = busy(false, &running);
            match inner.store.operations_in_progress().await {
                Ok(ops) => {
                    for op in ops {
                        let op = op.value;
                        if busy_ops.contains(&op.instance_id) {
                            continue;
                        }
                        let iid = op.instance_id.clone();
                        let i2 = inner.clone();
                        let h = tasks.spawn(async move {
                            let iid = op.instance_id.clone();
                            let i3 = i2.clone();
                            i2.claimed(&iid, ClaimKind::Operations, i3.drive(op)).await;
                        });
                        running.insert(h.id(), (iid, false));
                    }
                }
                Err(e) => warn!("cannot read the operations in progress: {e}"),
            }
            let busy_backups = busy(true, &running);
            inner
                .start_due_backups(&busy_backups, &mut backup_retry, &mut tasks, &mut running)
                .await;
            inner.start_due_purge(&mut purge_next, &mut purge_task);
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                Some(r) = tasks.join_next_with_id() => {
                    let id = match &r { Ok((id, ())) => *id, Err(e) => e.id() };
                    running.remove(&id);
                }
            }
        }
        tasks.shutdown().await;
        if let Some(t) = purge_task {
            t.abort();
            let _ = t.await;
        }
        inner.router.lock().await.release().await;
        info!("provisioning worker stopped");
    }
}

impl Inner {
    /// How long a claim lasts without renewal: a few polls, at least 10 s.
    fn claim_ttl(&self) -> Duration {
        (self.config.worker.poll_interval.0 * 3).max(Duration::from_secs(10))
    }

    /// Runs `work` while holding the claim `kind` on instance `iid`, renewed every third of its lifetime;
    /// does nothing when another worker holds it, and abandons `work` (dropping it where it
    /// stands, as a crash would) when the claim is lost or cannot be renewed in time.
    async fn claimed(&self, iid: &str, kind: ClaimKind, work: impl Future<Output = ()>) {
        let _ = self.try_claimed(iid, kind, work).await;
    }

    /// [`Inner::claimed`], with `work`'s result: `None` when the claim was not had or was
    /// lost (then `work` did not finish).
    async fn try_claimed<T>(
        &self,
        iid: &str,
        kind: ClaimKind,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        let ttl = self.claim_ttl();
        match self.store.claim(iid, kind, &self.id, ttl).await {
            Ok(true) => {}
            Ok(false) => {
                debug!(instance = %iid, "another worker is working on this instance");
                return None;
            }
            Err(e) => {
                warn!(instance = %iid, "cannot claim the instance: {e}");
                return None;
            }
        }
        let renew = async {
            let mut renewed = Instant::now();
            loop {
                tokio::time::sleep(ttl / 3).await;
                match self.store.claim(iid, kind, &self.id, ttl).await {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => return "taken by another worker".to_string(),
                    Err(e) if renewed.elapsed() >= ttl * 2 / 3 => {
                        return format!("cannot be renewed ({e})")
                    }
                    Err(e) => warn!(instance = %iid, "cannot renew the claim yet: {e}"),
                }
            }
        };
        tokio::select! {
            done = work => {
                if let Err(e) = self.store.release_claim(iid, kind, &self.id).await {
                    debug!(instance = %iid, "cannot release the claim: {e}");
                }
                Some(done)
            }
            why = renew => {
                warn!(instance = %iid, "claim lost: {why}; work abandoned");
                None
            }
        }
    }

    fn cell(&self, name: &str) -> Option<&CellInfo> {
        self.cells.iter().find(|c| c.name == name)
    }

    /// Drives `op` until it is finished, superseded, or this task is aborted.
    async fn drive(self: Arc<Self>, op: OperationRecord) {
        // A restore (a clone) replays an archive for as long as it takes: it gets
        // `restore_timeout`, and its pass fails it when it stops making progress.
        let restores = op.kind == OperationKind::Provision
            && matches!(self.store.instance(&op.instance_id).await,
                        Ok(Some(i)) if i.value.restore.is_some());
        let timeout = if restores {
            self.config.worker.restore_timeout.0
        } else {
            self.config.worker.operation_timeout.0
        };
        let deadline =
            op.started_at.0 + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
        info!(instance = %op.instance_id, operation = %op.id, kind = ?op.kind,
              "working on operation");
        let mut pass = Pass::default();
        let mut last_description = op.description.clone();
        let mut backoff = Backoff::new(Duration::from_secs(1), self.config.worker.backoff_max.0);
        // What is failing now: the backoff grows while the same step keeps failing, however
        // many passes that wait for something else come in between.
        let mut failing: Option<&'static str> = None;
        loop {
            let result = match op.kind {
                OperationKind::Provision => self.provision_pass(&op, &mut pass).await,
                OperationKind::Update => self.update_pass(&op, &mut pass).await,
                OperationKind::Deprovision => self.deprovision_pass(&op).await,
                OperationKind::Backup => self.backup_pass(&op).await,
                OperationKind::Switchover => self.switchover_pass(&op, &mut pass).await,
            };
            let (description, delay) = match result {
                Ok(description) => {
                    let done = Outcome {
                        succeeded: true,
                        description,
                        instance_usable: None,
                    };
                    (done.description.clone(), Err(done))
                }
                Err(Step::Stop(e)) => {
                    info!(instance = %op.instance_id, operation = %op.id, "stopping: {e}");
                    return;
                }
                Err(Step::Fail(reason)) => {
                    let done = self.failure(&op, reason);
                    (done.description.clone(), Err(done))
                }
                Err(Step::Pending(description)) => (description, Ok(Duration::from_secs(1))),
                Err(Step::Retry {
                    state,
                    what,
                    detail,
                }) => {
                    if failing != Some(what) {
                        failing = Some(what);
                        backoff.reset();
                    }
                    let delay = backoff.failed();
                    let attempt = backoff.attempts();
                    warn!(instance = %op.instance_id, operation = %op.id, attempt,
                          retry_in = ?delay, "{what}: {detail}");
                    let state = state.map(|s| s + "; ").unwrap_or_default();
                    (
                        format!(
                            "{state}{what}; retrying (attempt {attempt}, next in {} s)",
                            delay.as_secs_f64().round().max(1.0)
                        ),
                        Ok(delay),
                    )
                }
            };
            let outcome = match delay {
                Err(done) => Some(done),
                Ok(_) if chrono::Utc::now() > deadline => Some(self.failure(
                    &op,
                    format!(
                        "Timed out after {} s; last state: {description}",
                        timeout.as_secs()
                    ),
                )),
                Ok(delay) => {
                    if description != last_description {
                        debug!(instance = %op.instance_id, "{description}");
                        match self
                            .store
                            .set_progress(&op.instance_id, &op.id, &description)
                            .await
                        {
                            Ok(()) => last_description = description,
                            Err(
                                e @ (StoreError::Superseded { .. } | StoreError::Finished { .. }),
                            ) => {
                                info!(instance = %op.instance_id, operation = %op.id,
                                      "stopping: {e}");
                                return;
                            }
                            Err(e) => warn!(instance = %op.instance_id, "progress: {e}"),
                        }
                    }
                    if !self.wait(&op, delay, deadline).await {
                        return;
                    }
                    None
                }
            };
            if let Some(outcome) = outcome {
                let succeeded = outcome.succeeded;
                match self
                    .store
                    .finish_operation(&op.instance_id, &op.id, outcome.clone())
                    .await
                {
                    Ok(_) => {
                        let kind = serde_json::to_value(op.kind)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default();
                        let took = (chrono::Utc::now() - op.started_at.0).num_milliseconds();
                        crate::metrics::operation_finished(&kind, succeeded, took as f64 / 1000.0);
                        if succeeded {
                            info!(instance = %op.instance_id, operation = %op.id,
                                  "{}", outcome.description);
                        } else {
                            warn!(instance = %op.instance_id, operation = %op.id,
                                  "operation failed: {}", outcome.description);
                        }
                        if let Err(e) = self.sync_router().await {
                            warn!("cannot update the router: {e}");
                        }
                        return;
                    }
                    Err(e) if e.is_transient() => {
                        warn!(instance = %op.instance_id, "cannot finish the operation yet: {e}");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(e) => {
                        info!(instance = %op.instance_id, operation = %op.id, "stopping: {e}");
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps `delay` (at most until `deadline`), looking every poll interval whether `op` is
    /// still current: a deprovision need not wait out a provision's long backoff. False when
    /// the operation was superseded or finished meanwhile.
    async fn wait(
        &self,
        op: &OperationRecord,
        delay: Duration,
        deadline: chrono::DateTime<chrono::Utc>,
    ) -> bool {
        let until = Instant::now()
            + delay.min((deadline - chrono::Utc::now()).to_std().unwrap_or_default());
        let step = self
            .config
            .worker
            .poll_interval
            .0
            .min(Duration::from_secs(2));
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            tokio::time::sleep(left.min(step)).await;
            if left <= step {
                return true;
            }
            if let Ok(Some(cur)) = self.store.operation(&op.instance_id).await {
                let cur = cur.value;
                if cur.id != op.id || cur.state != crate::state::OperationState::InProgress {
                    info!(instance = %op.instance_id, operation = %op.id,
                          "stopping: superseded while waiting to retry");
                    return false;
                }
            }
        }
    }

    /// The lock of instance `iid`'s backups in this process (see `backup_locks`).
    fn backup_lock(&self, iid: &str) -> Arc<Mutex<()>> {
        self.backup_locks
            .lock()
            .expect("backup locks")
            .entry(iid.to_string())
            .or_default()
            .clone()
    }

    fn failure(&self, op: &OperationRecord, reason: String) -> Outcome {
        Outcome {
            succeeded: false,
            description: reason,
            // A failed update leaves the nodes it had; the instance stays usable.
            instance_usable: (op.kind == OperationKind::Update).then_some(true),
        }
    }

    /// Reads the instance of `op`, checking that `op` is still its current operation and in
    /// progress (without writing: passes run every second).
    async fn current(&self, op: &OperationRecord) -> Result<InstanceRecord, Step> {
        let (inst, cur) = self.store.instance_and_operation(&op.instance_id).await?;
        let not_found = |what| {
            Step::Stop(StoreError::NotFound {
                what,
                id: op.instance_id.clone(),
            })
        };
        let inst = inst.ok_or_else(|| not_found("instance"))?.value;
        let cur = cur.ok_or_else(|| not_found("operation"))?.value;
        if cur.id != op.id {
            return Err(Step::Stop(StoreError::Superseded {
                instance: op.instance_id.clone(),
                operation: op.id.clone(),
                current: cur.id,
            }));
        }
        if cur.state != crate::state::OperationState::InProgress {
            return Err(Step::Stop(StoreError::Finished {
                instance: op.instance_id.clone(),
                operation: op.id.clone(),
                state: cur.state,
            }));
        }
        Ok(inst)
    }
}

/// What one task remembers between passes of an operation (lost with the task, which only
/// costs a repeated, idempotent step).
#[derive(Default)]
struct Pass {
    /// Nodes PUT by this task, with the peer hosts they got and whether with a bootstrap
    /// spec (a clone's first node, until it is re-PUT without).
    put: HashMap<String, (Vec<String>, bool)>,
    /// Whether the first base backup was taken by this task.
    backed_up: bool,
    /// A switchover: when this task asked Patroni for it.
    switchover_asked: Option<Instant>,
    /// A restore's last progress (bytes restored, last segment replayed) and when it was
    /// first seen: a restore that stops moving fails (`worker/restore.rs`).
    restore_progress: Option<(String, Instant)>,
    /// Since when a restore's Patroni `initialize` key has been seen stale (design R2).
    stale_initialize: Option<Instant>,
}
