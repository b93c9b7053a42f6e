//! Scheduled base backups and retention.
//!
//! Every ready instance gets a base backup once its last one is older than
//! `backups.interval`, taken by its leader's cell agent, followed by
//! `walarchive delete retain N`. They run in tasks of their own, beside the instance's
//! operations (a long backup must not hold up an update or a deprovision), one per instance,
//! claimed across brokers like operations; a failed one is tried again after
//! `min(interval, 5 min)`. Backups asked for on the dashboard (`worker/actions.rs`) take the
//! same path ([`Inner::take_backup`]) under the same claim and lock, so the two never run at
//! once; each backup's node and who asked for it go to the instance's backup log.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tracing::{info, warn};

use super::{Inner, WorkerError};
use crate::state::{BackupEntry, ClaimKind, InstanceState, StoreError, Timestamp};

/// `requested_by` of the backups the broker takes by itself (scheduled and first ones).
pub(super) const SCHEDULE: &str = "schedule";

impl Inner {
    /// Starts a backup task for every instance that is due and not `busy` with one
    /// already, recording it in `running` (as a backup) and when to try it again in `retry`.
    pub(super) async fn start_due_backups(
        self: &Arc<Self>,
        busy: &HashSet<String>,
        retry: &mut HashMap<String, Instant>,
        tasks: &mut JoinSet<()>,
        running: &mut HashMap<tokio::task::Id, (String, bool)>,
    ) {
        match self.due_backups(busy, retry).await {
            Ok(due) => {
                for iid in due {
                    let interval = self.config.backups.interval.0;
                    retry.insert(
                        iid.clone(),
                        Instant::now() + interval.min(Duration::from_secs(300)),
                    );
                    let i2 = self.clone();
                    let id2 = iid.clone();
                    let h = tasks.spawn(async move {
                        let work = async {
                            if let Err(e) = i2.backup(&id2).await {
                                warn!(instance = %id2, "scheduled backup failed: {e}");
                            }
                        };
                        i2.claimed(&id2, ClaimKind::Backups, work).await;
                    });
                    running.insert(h.id(), (iid, true));
                }
            }
            Err(e) => warn!("cannot read the instances for backups: {e}"),
        }
    }

    /// Ready instances whose last base backup is older than `backups.interval`.
    async fn due_backups(
        &self,
        busy: &HashSet<String>,
        retry: &HashMap<String, Instant>,
    ) -> Result<Vec<String>, StoreError> {
        let interval = chrono::Duration::from_std(self.config.backups.interval.0)
            .unwrap_or(chrono::Duration::MAX);
        let now = chrono::Utc::now();
        Ok(self
            .store
            .instances()
            .await?
            .into_iter()
            .map(|v| v.value)
            .filter(|i| i.state == InstanceState::Ready && !busy.contains(&i.id))
            .filter(|i| retry.get(&i.id).is_none_or(|t| *t <= Instant::now()))
            .filter(|i| i.last_backup_at.is_none_or(|t| now - t.0 >= interval))
            .map(|i| i.id)
            .collect())
    }

    /// A scheduled base backup of a ready instance (unless one was taken meanwhile, e.g. on
    /// the dashboard while this one waited for the instance's backup lock).
    async fn backup(&self, iid: &str) -> Result<(), WorkerError> {
        let lock = self.backup_lock(iid);
        let _held = lock.lock().await;
        let Some(inst) = self.store.instance(iid).await? else {
            return Ok(());
        };
        let interval = chrono::Duration::from_std(self.config.backups.interval.0)
            .unwrap_or(chrono::Duration::MAX);
        if inst
            .value
            .last_backup_at
            .is_some_and(|t| chrono::Utc::now() - t.0 < interval)
        {
            return Ok(());
        }
        self.take_backup(&inst.value, SCHEDULE, None).await?;
        Ok(())
    }

    /// Takes a base backup of `inst` on its leader, records it (with the node and
    /// `requested_by`, and the dashboard's `operation`) in the instance's backup log, applies
    /// retention and sets `last_backup_at`: what scheduled and on-demand backups share. The
    /// caller holds the instance's backup lock. Returns the backup's name and node.
    pub(super) async fn take_backup(
        &self,
        inst: &crate::state::InstanceRecord,
        requested_by: &str,
        operation: Option<&str>,
    ) -> Result<(String, String), WorkerError> {
        let iid = inst.id.as_str();
        let err = |message: String| WorkerError::Backup {
            instance: iid.to_string(),
            message,
        };
        let seen = self.observe(inst).await;
        let leader = seen
            .leader()
            .ok_or_else(|| err(format!("no leader ({})", seen.describe())))?;
        let node = inst
            .nodes
            .iter()
            .find(|n| n.name == leader.name)
            .expect("observed");
        let cell = self
            .cell(&node.cell)
            .ok_or_else(|| err(format!("cell {} not configured", node.cell)))?;
        let started_at = Timestamp::now();
        let b = cell
            .client
            .backup(&leader.name)
            .await
            .map_err(|e| err(e.to_string()))?;
        let name = b.summary["name"].as_str().unwrap_or_default().to_string();
        info!(instance = %iid, backup = %name, node = %leader.name, seconds = b.seconds,
              requested_by, "base backup taken");
        self.record_backup(
            iid,
            &name,
            &leader.name,
            requested_by,
            started_at,
            operation,
        )
        .await;
        self.apply_retention(&inst.repository).await.map_err(err)?;
        let now = Timestamp::now();
        self.store
            .update_instance(iid, |i| {
                i.last_backup_at = Some(now);
                Ok(())
            })
            .await?;
        Ok((name, leader.name.clone()))
    }

    /// A first backup (of a new instance or a clone) of `node` through its cell's `client`,
    /// recorded in the instance's backup log as the broker's own (`schedule`).
    pub(super) async fn logged_backup(
        &self,
        iid: &str,
        client: &crate::cell::CellClient,
        node: &str,
    ) -> Result<crate::cell::BackupOutcome, crate::cell::ClientError> {
        self.backup_logged_as(iid, client, node, SCHEDULE, None)
            .await
    }

    /// `node`'s backup through its cell's `client`, recorded in the instance's backup log
    /// with `requested_by` and the dashboard's `operation`.
    async fn backup_logged_as(
        &self,
        iid: &str,
        client: &crate::cell::CellClient,
        node: &str,
        requested_by: &str,
        operation: Option<&str>,
    ) -> Result<crate::cell::BackupOutcome, crate::cell::ClientError> {
        let started_at = Timestamp::now();
        let b = client.backup(node).await?;
        let name = b.summary["name"].as_str().unwrap_or_default();
        self.record_backup(iid, name, node, requested_by, started_at, operation)
            .await;
        Ok(b)
    }

    /// Adds a backup to the instance's backup log (a failure is logged: the backup itself
    /// is in the repository either way).
    async fn record_backup(
        &self,
        iid: &str,
        name: &str,
        node: &str,
        requested_by: &str,
        started_at: Timestamp,
        operation: Option<&str>,
    ) {
        if name.is_empty() {
            warn!(instance = %iid, "backup-push named no backup; not recorded in the backup log");
            return;
        }
        let entry = BackupEntry {
            name: name.to_string(),
            node: node.to_string(),
            requested_by: requested_by.to_string(),
            started_at,
            finished_at: Timestamp::now(),
            operation: operation.map(str::to_string),
        };
        if let Err(e) = self.store.record_backup(iid, entry).await {
            warn!(instance = %iid, backup = %name, "cannot record the backup's node: {e}");
        }
    }

    /// Runs the broker's walarchive on `repository` with the storage environment; its
    /// stdout, or why it failed.
    async fn walarchive(&self, repository: &str, args: &[&str]) -> Result<String, String> {
        self.walarchive_output(repository, args)
            .await
            .map_err(|(_, message)| message)
    }

    /// [`Inner::walarchive`], with walarchive's exit status beside the error.
    pub(super) async fn walarchive_output(
        &self,
        repository: &str,
        args: &[&str],
    ) -> Result<String, (Option<i32>, String)> {
        let bin = &self.config.nodes.walarchive;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("--repo")
            .arg(repository)
            .arg("--quiet")
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        for (k, v) in &self.storage_env {
            cmd.env(k, v.expose());
        }
        let out = cmd
            .output()
            .await
            .map_err(|e| (None, format!("cannot run {}: {e}", bin.display())))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err((
                out.status.code(),
                format!(
                    "walarchive {} failed: {}",
                    args.first().unwrap_or(&""),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ))
        }
    }

    /// `walarchive --repo REPO delete retain N --confirm` with the storage environment.
    async fn apply_retention(&self, repository: &str) -> Result<(), String> {
        let retain = self.config.backups.retain.to_string();
        self.walarchive(repository, &["delete", "retain", &retain, "--confirm"])
            .await?;
        info!(
            repository,
            retain = self.config.backups.retain,
            "retention applied"
        );
        Ok(())
    }
}
