//! The restore pass: building a clone from its source's archive (design §2.5, §2.6).
//!
//! Why a pass of its own: a clone's cluster does not start from `initdb`. Its first node is
//! put on its cell with a bootstrap spec (Patroni's custom bootstrap restores the source's
//! backup and replays the source's WAL up to the target, then promotes); only once it leads,
//! holds at least the expected WAL, and no credential of the source can open it, does the
//! clone get a route, its own first backup and its replicas (restored from that backup, never
//! from the source). Every step is derived from the world (the cells' status, the record's
//! `restore.reached` and `roles_removed`, `last_backup_at`), never from memory, so a broker
//! killed anywhere resumes where it stood.
//!
//! A restore that fails (the archive ends before the target, a damaged object, anything
//! unexpected) removes every node of the clone and Patroni's keys before the operation fails:
//! nothing that could pass for a copy stays running, and no Patroni bootstraps again forever.
//! An archive that could not be read is retried a few times on a fresh node.

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use tracing::{info, warn};

use super::{Inner, Pass, Step, INTERNAL};
use crate::cell::{BootstrapSpec, BootstrapTarget, NodeStatus};
use crate::state::{
    CloneAt, InstanceRecord, OperationRecord, Reached, ResolvedTarget, RestoreKind, RestoreRecord,
    TargetSpec, Timestamp,
};
use crate::windows::time_text;

/// How many times a restore whose archive could not be read is started (design §2.5.3).
const MAX_ATTEMPTS: u32 = 3;

/// Appended to the reason of every failed restore.
const REMOVED: &str = " The clone's nodes were removed; deprovision this instance.";

/// What a failed restore's `failed` text says happened.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// Recovery ended before the target: the archive lacks WAL the target needs.
    Missing,
    /// walarchive found a damaged object (status 8, or 208 from `wal-fetch`).
    Damaged(i64),
    /// The archive could not be read (status 7 or 207): worth another attempt.
    Storage,
    /// Anything else (the operator reads the details in the log).
    Other,
}

/// Classifies a node's `restore.failed` text (the cell's: walarchive's status and last lines,
/// or PostgreSQL's `FATAL` line).
pub(super) fn classify(failed: &str) -> Failure {
    // PostgreSQL's refusal at the end of replay, or backup-fetch's before it starts (it
    // refuses, as PostgreSQL would, a target its archive does not reach).
    if failed.contains("recovery ended before configured recovery target was reached")
        || failed.contains("could not locate required checkpoint record")
        || failed.contains("requested timeline")
        || failed.contains("cannot be restored:")
    {
        return Failure::Missing;
    }
    let status = failed
        .split_once("exited with status ")
        .and_then(|(_, rest)| {
            rest.split(|c: char| !c.is_ascii_digit() && c != '-')
                .next()?
                .parse::<i64>()
                .ok()
        });
    match status {
        Some(12 | 15) => Failure::Missing,
        Some(s @ (8 | 208)) => Failure::Damaged(s),
        Some(7 | 207) => Failure::Storage,
        _ => Failure::Other,
    }
}

/// The source as users know it: its name, else its instance id.
fn source_name(r: &RestoreRecord) -> String {
    r.source
        .name
        .clone()
        .unwrap_or_else(|| r.source.instance_id.clone())
}

/// A recovery target time as stored: RFC 3339, or PostgreSQL's `2026-12-07 10:15:00.000000+00`.
fn parse_target_time(s: &str) -> Option<DateTime<Utc>> {
    walarchive::manifest::parse_time(s).or_else(|| {
        DateTime::parse_from_str(&format!("{s}00"), "%Y-%m-%d %H:%M:%S%.f%z")
            .ok()
            .map(|t| t.with_timezone(&Utc))
    })
}

/// The target as descriptions show it.
fn target_text(r: &ResolvedTarget) -> String {
    match &r.target {
        TargetSpec::Time(t) => parse_target_time(t).map_or_else(|| t.clone(), time_text),
        TargetSpec::Lsn(l) => format!("LSN {l}"),
    }
}

/// The point the clone asked for, in words (as in the final description).
fn at_text(r: &RestoreRecord) -> String {
    match r.requested.as_ref().and_then(|p| p.clone_at.as_ref()) {
        None => "the latest archived point".into(),
        Some(CloneAt::Time(s)) => parse_target_time(s).map_or_else(|| s.clone(), time_text),
        Some(CloneAt::Lsn(l)) => format!("LSN {l}"),
        Some(CloneAt::RestorePoint(n)) => format!("restore point {n:?}"),
    }
}

/// "1.2 of 3.4 GiB" (MiB below a GiB).
fn bytes_text(done: u64, total: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let (unit, div) = if total as f64 >= 1024.0 * MIB {
        ("GiB", 1024.0 * MIB)
    } else {
        ("MiB", MIB)
    };
    format!(
        "{:.1} of {:.1} {unit}",
        done as f64 / div,
        total as f64 / div
    )
}

/// Where the restore of the first node stands, from its cell's status: for a clone, a restore
/// of `source`'s archive; for a disaster recovery, `source` (the instance itself) recovering
/// from its own archive.
pub(super) fn progress_description(
    kind: RestoreKind,
    source: &str,
    resolved: &ResolvedTarget,
    status: Option<&NodeStatus>,
) -> String {
    let target = target_text(resolved);
    let r = status.and_then(|s| s.restore.as_ref());
    let (prefix, of) = match kind {
        RestoreKind::Clone => (String::new(), format!(" of {source}")),
        RestoreKind::Recover => (
            format!("recovering {source} from its own archive: "),
            String::new(),
        ),
    };
    let step = match (
        r.and_then(|r| r.progress.as_ref()),
        r.and_then(|r| r.replay.as_ref()),
    ) {
        (_, Some(replay)) => format!(
            "replaying WAL{of} to {target} (at segment {})",
            replay.last_restored
        ),
        (Some(p), None) if !p.done => format!(
            "restoring base backup {}{of} ({})",
            p.backup,
            bytes_text(p.bytes_done, p.bytes_total)
        ),
        (Some(p), None) => format!(
            "base backup {}{of} restored; replaying WAL to {target}",
            p.backup
        ),
        (None, None) => format!(
            "starting the restore of base backup {}{of}",
            resolved.backup
        ),
    };
    format!("{prefix}{step}")
}

/// What descriptions say once the first node promoted: "clone promoted", or for a disaster
/// recovery "<name> recovered from its own archive".
fn promoted_text(kind: RestoreKind, source: &str) -> String {
    match kind {
        RestoreKind::Clone => "clone promoted".into(),
        RestoreKind::Recover => format!("{source} recovered from its own archive"),
    }
}

/// The user's reason for a failed restore (without [`REMOVED`]).
pub(super) fn failure_reason(source: &str, failure: &Failure, status: &NodeStatus) -> String {
    match failure {
        Failure::Missing => {
            let after = status
                .restore
                .as_ref()
                .and_then(|r| r.replay.as_ref())
                .map(|r| format!("WAL after segment {} is missing", r.last_restored))
                .unwrap_or_else(|| "WAL between its base backup and the target is missing".into());
            format!("The archive of {source} ends before the clone's target: {after}.")
        }
        Failure::Damaged(s) => format!(
            "An object in the archive of {source} is damaged (walarchive exited with status {s})."
        ),
        Failure::Storage => format!("The archive of {source} could not be read."),
        Failure::Other => INTERNAL.to_string(),
    }
}

/// The bootstrap spec of the clone's first node.
fn bootstrap_spec(r: &RestoreRecord, resolved: &ResolvedTarget) -> Result<BootstrapSpec, Step> {
    let recovery_target = match &resolved.target {
        TargetSpec::Lsn(l) => BootstrapTarget::Lsn(l.clone()),
        TargetSpec::Time(t) => match parse_target_time(t) {
            Some(t) => BootstrapTarget::Time(t.to_rfc3339_opts(SecondsFormat::Micros, true)),
            None => {
                warn!(target = %t, "a clone's resolved target time does not parse");
                return Err(Step::Fail(INTERNAL.into()));
            }
        },
    };
    Ok(BootstrapSpec {
        source_repository: r.source.repository.clone(),
        backup: resolved.backup.clone(),
        recovery_target,
        timeline: resolved.timeline,
        disable_roles: r.kind == RestoreKind::Clone,
        group_role: crate::binder::BinderOptions::default().group_role,
        // A recovery restores from the instance's own archive and goes on archiving there.
        same_repository: r.kind == RestoreKind::Recover,
    })
}

impl Inner {
    /// One pass of a provision whose cluster starts from an archive (`inst.restore` set): see
    /// the module's comment. Done when the clone leads, is routed, has its first backup and
    /// every replica streams.
    pub(super) async fn restore_pass(
        &self,
        op: &OperationRecord,
        inst: InstanceRecord,
        pass: &mut Pass,
    ) -> Result<String, Step> {
        let mut restore = inst.restore.clone().expect("a restore");
        let source = source_name(&restore);
        let resolved = match &restore.resolved {
            Some(r) => r.clone(),
            None => self.resolve_in_worker(op, &restore, &source).await?,
        };
        if inst.nodes.is_empty() && restore.kind == RestoreKind::Clone {
            self.check_new_repository(&inst).await?;
        }
        let secrets = self.secrets(&inst.id).await?;
        let inst = self
            .place(op, &inst, op.request.node_count as usize)
            .await?;
        let first = inst.nodes[0].clone();
        let cell = self.cell(&first.cell).ok_or_else(|| {
            warn!(instance = %inst.id, cell = %first.cell, "the cell of a node is no longer configured");
            Step::Fail(INTERNAL.into())
        })?;

        // 2–5: the first node restores and promotes; what it reached is recorded.
        if restore.reached.is_none() {
            let spec = bootstrap_spec(&restore, &resolved)?;
            let inst = self
                .ensure_nodes_with(op, &inst, &secrets, pass, Some(&first.name), Some(&spec))
                .await?;
            let status = cell.client.node(&first.name).await.map_err(|e| {
                Step::retry(
                    None,
                    "the clone's first node could not be observed",
                    format_args!("node {} on cell {}: {e}", first.name, cell.name),
                )
            })?;
            if let Some(failed) = status
                .as_ref()
                .and_then(|s| s.restore.as_ref())
                .and_then(|r| r.failed.clone())
            {
                let status = status.expect("some");
                return Err(self
                    .restore_failed(op, &inst, &restore, &source, &status, &failed, pass)
                    .await);
            }
            let Some(status) = status.clone().filter(NodeStatus::is_leader) else {
                let description =
                    progress_description(restore.kind, &source, &resolved, status.as_ref());
                if let Some(s) = &status {
                    self.stale_initialize(op, &inst, &restore, s, pass).await?;
                }
                if let Some(stalled) = self.stalled(pass, status.as_ref()) {
                    warn!(instance = %inst.id, "the restore made no progress: {description}");
                    return Err(self
                        .teardown_and_fail(
                            op,
                            &inst,
                            format!(
                                "The restore of {source} made no progress for {} s (last: {description}).",
                                stalled.as_secs()
                            ),
                        )
                        .await);
                }
                return Err(Step::Pending(description));
            };
            // Patroni reports the node as a running primary while its post_bootstrap (which
            // takes the login from the source's roles) still runs; it takes the leader key
            // only after it succeeded.
            if !self.holds_leader_key(&inst, &status.name).await? {
                return Err(Step::Pending(format!(
                    "{}; the clone is finishing its bootstrap",
                    progress_description(restore.kind, &source, &resolved, Some(&status))
                )));
            }
            let wal = cell.client.wal(&status.name).await.map_err(|e| {
                Step::retry(
                    None,
                    "the clone's first node could not be asked where its WAL is",
                    format_args!("node {}: {e}", status.name),
                )
            })?;
            let lsn = |s: &str| s.parse::<walarchive::Lsn>().ok();
            let replayed = wal.replay_lsn.as_deref().and_then(lsn);
            let expect = lsn(&resolved.expect_lsn);
            if replayed.is_none() || expect.is_none() || replayed < expect {
                warn!(instance = %inst.id, wal = ?wal, expect = %resolved.expect_lsn,
                      "the clone promoted before its expected LSN");
                return Err(self
                    .teardown_and_fail(
                        op,
                        &inst,
                        format!(
                            "The archive of {source} ends before the clone's target: recovery stopped at LSN {} before {}.",
                            wal.replay_lsn.as_deref().unwrap_or("(none)"),
                            resolved.expect_lsn
                        ),
                    )
                    .await);
            }
            let reached = Reached {
                lsn: wal.replay_lsn.clone().expect("checked"),
                // PostgreSQL forgets the last replayed transaction's time when Patroni
                // restarts the promoted server: then the resolved target's says it.
                time: wal
                    .replay_time
                    .as_deref()
                    .and_then(walarchive::manifest::parse_time)
                    .map(Timestamp)
                    .or(resolved.expect_time),
            };
            info!(instance = %inst.id, lsn = %reached.lsn, "clone promoted");
            let (ni, _) = self
                .store
                .transition(&op.instance_id, &op.id, |i, _| {
                    if let Some(r) = i.restore.as_mut() {
                        r.reached = Some(reached.clone());
                    }
                    Ok(())
                })
                .await?;
            restore = ni.restore.clone().expect("a restore");
        }
        let reached = restore.reached.clone().expect("recorded");
        let promoted = format!(
            "{} at {} (LSN {})",
            promoted_text(restore.kind, &source),
            reached
                .time
                .map_or_else(|| "its target".to_string(), |t| time_text(t.0)),
            reached.lsn
        );

        // 6: the source's credentials gone, the history pushed; only then a route.
        if !restore.roles_removed {
            self.remove_source_roles(op, &inst, &restore, &first.name, cell, &promoted)
                .await?;
        }
        self.sync_router()
            .await
            .map_err(|e| Step::retry(None, "the router could not be updated", e))?;

        // 7: the clone's own first backup (its replicas restore from it, never the source).
        let inst = self.current(op).await?;
        if inst.last_backup_at.is_none() {
            self.store
                .set_progress(
                    &op.instance_id,
                    &op.id,
                    &format!(
                        "{}; taking its first backup",
                        promoted_text(restore.kind, &source)
                    ),
                )
                .await?;
            match self
                .logged_backup(&inst.id, &cell.client, &first.name)
                .await
            {
                Ok(b) => {
                    info!(instance = %inst.id, backup = %b.summary["name"], seconds = b.seconds,
                          "the clone's first base backup taken");
                    let now = Timestamp::now();
                    self.store
                        .transition(&op.instance_id, &op.id, |i, _| {
                            i.last_backup_at = Some(now);
                            Ok(())
                        })
                        .await?;
                }
                Err(e) => {
                    return Err(Step::retry(
                        Some(promoted_text(restore.kind, &source)),
                        "the clone's first base backup failed",
                        format_args!("node {}: {e}", first.name),
                    ))
                }
            }
        }

        // 8–9: every node without the bootstrap spec (the first one re-PUT, so that a node
        // rebuilt later never clones the source again), replicas streaming, routed.
        let (inst, seen) = self
            .nodes_up_and_routed(op, &inst, &secrets, pass)
            .await
            .map_err(|s| match s {
                Step::Pending(d) => {
                    Step::Pending(format!("{}; {d}", promoted_text(restore.kind, &source)))
                }
                other => other,
            })?;
        if !self.route_works(&inst).await {
            return Err(Step::Pending(format!(
                "{}; {}; waiting for the router",
                promoted_text(restore.kind, &source),
                seen.describe()
            )));
        }
        let n = inst.nodes.len();
        let upto = match reached.time {
            Some(t) => format!(
                "every transaction committed up to {} (LSN {})",
                time_text(t.0),
                reached.lsn
            ),
            None => format!("the archived WAL up to LSN {}", reached.lsn),
        };
        let plural = if n == 1 { "" } else { "s" };
        if restore.kind == RestoreKind::Recover {
            return Ok(format!(
                "Recovered after a disaster from its own archive ({n} node{plural}): {upto}."
            ));
        }
        Ok(format!(
            "The clone of {source} at {} is ready ({n} node{plural}): {upto}.",
            at_text(&restore),
        ))
    }

    /// Starts the restore again on a fresh first node (R2, or an archive that could not be
    /// read): the nodes and Patroni's keys removed, the next attempt counted and the nodes'
    /// ports cleared, so that the next pass places and bootstraps them anew.
    async fn start_again(
        &self,
        op: &OperationRecord,
        inst: &InstanceRecord,
        pass: &mut Pass,
    ) -> Result<(), Step> {
        self.remove_nodes_and_keys(inst).await?;
        pass.put.clear();
        self.store
            .transition(&op.instance_id, &op.id, |i, _| {
                if let Some(r) = i.restore.as_mut() {
                    r.attempt += 1;
                }
                for n in &mut i.nodes {
                    n.pg_port = 0;
                    n.api_port = 0;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// R2 (design §7): a Patroni killed during its bootstrap leaves the `initialize` key set
    /// to `""`, and the restarted one waits forever for a leader to bootstrap. When the first
    /// node was restarted, has no leader and that key stayed empty for twice Patroni's TTL,
    /// the node and Patroni's keys are removed and the restore starts again (a new attempt).
    async fn stale_initialize(
        &self,
        op: &OperationRecord,
        inst: &InstanceRecord,
        restore: &RestoreRecord,
        status: &NodeStatus,
        pass: &mut Pass,
    ) -> Result<(), Step> {
        let key = format!(
            "{}{}/initialize",
            self.config.patroni_namespace(),
            inst.scope()
        );
        let stale = status.restarts > 0
            && self
                .store
                .etcd()
                .get(key.as_bytes())
                .await
                .map_err(|e| {
                    Step::retry(None, "the cluster's coordination keys could not be read", e)
                })?
                .is_some_and(|kv| kv.value.is_empty());
        if !stale {
            pass.stale_initialize = None;
            return Ok(());
        }
        let since = *pass.stale_initialize.get_or_insert_with(Instant::now);
        if since.elapsed() < Duration::from_secs(2 * u64::from(self.config.nodes.ttl)) {
            return Ok(());
        }
        warn!(instance = %inst.id, node = %status.name, attempt = restore.attempt,
              "the clone's bootstrap was interrupted (Patroni's initialize key is stale); starting it again");
        if restore.attempt + 1 >= MAX_ATTEMPTS {
            return Err(self.teardown_and_fail(op, inst, INTERNAL.into()).await);
        }
        self.start_again(op, inst, pass).await?;
        pass.stale_initialize = None;
        Err(Step::Pending(format!(
            "starting the restore of {} again (it was interrupted)",
            source_name(restore)
        )))
    }

    /// How long the restore has not moved, when that is longer than `operation_timeout`:
    /// progress is the bytes of the base backup restored and the last segment replayed (in
    /// this task's memory: a new task starts counting again, which only delays the verdict).
    fn stalled(&self, pass: &mut Pass, status: Option<&NodeStatus>) -> Option<Duration> {
        let r = status.and_then(|s| s.restore.as_ref());
        let now = format!(
            "{:?}/{:?}",
            r.and_then(|r| r.progress.as_ref()).map(|p| p.bytes_done),
            r.and_then(|r| r.replay.as_ref()).map(|p| &p.last_restored)
        );
        match &pass.restore_progress {
            Some((last, since)) if *last == now => {
                let stalled = since.elapsed();
                (stalled > self.config.worker.operation_timeout.0).then_some(stalled)
            }
            _ => {
                pass.restore_progress = Some((now, Instant::now()));
                None
            }
        }
    }

    /// Whether `node` holds the leader key of `inst`'s Patroni cluster.
    async fn holds_leader_key(&self, inst: &InstanceRecord, node: &str) -> Result<bool, Step> {
        let key = format!("{}{}/leader", self.config.patroni_namespace(), inst.scope());
        let kv = self.store.etcd().get(key.as_bytes()).await.map_err(|e| {
            Step::retry(None, "the cluster's coordination keys could not be read", e)
        })?;
        Ok(kv.is_some_and(|kv| kv.value == node.as_bytes()))
    }

    /// §2.6: checks that no binding role of the source can log in (the post-bootstrap script
    /// took their login), drops every binding role (all the source's; their objects go to the
    /// group role), archives the history files the clone forked from, and records
    /// `roles_removed`.
    async fn remove_source_roles(
        &self,
        op: &OperationRecord,
        inst: &InstanceRecord,
        restore: &RestoreRecord,
        leader: &str,
        cell: &super::CellInfo,
        promoted: &str,
    ) -> Result<(), Step> {
        self.store
            .set_progress(
                &op.instance_id,
                &op.id,
                &format!("{promoted}; removing the source's credentials"),
            )
            .await?;
        let retry = |what: &'static str| {
            move |e: crate::cell::ClientError| {
                Step::retry(
                    Some(promoted_text(restore.kind, &source_name(restore))),
                    what,
                    format_args!("node {leader}: {e}"),
                )
            }
        };
        if restore.kind == RestoreKind::Clone {
            let can_login = cell
                .client
                .login_roles(leader, &["b_", "h_"])
                .await
                .map_err(retry("the clone's roles could not be listed"))?;
            if !can_login.is_empty() {
                warn!(instance = %inst.id, roles = ?can_login,
                      "binding roles of the source can log in to the clone: the post-bootstrap script did not run");
                return Err(self.teardown_and_fail(op, inst, INTERNAL.into()).await);
            }
            let group = crate::binder::BinderOptions::default().group_role;
            // Every binding role is the source's (the clone has no binding before it is
            // ready), including those of bindings a deleted source no longer records.
            let roles = cell
                .client
                .roles(leader, &["b_", "h_"])
                .await
                .map_err(retry("the clone's roles could not be listed"))?;
            for role in roles {
                if !crate::binder::valid_role_name(&role) {
                    // Not a binding's: the post-bootstrap script took its login all the same.
                    warn!(instance = %inst.id, role = %role, "a role of the source left on the clone (not a binding's name)");
                    continue;
                }
                cell.client
                    .delete_role(leader, &role, &group)
                    .await
                    .map_err(retry(
                        "a role of the source could not be removed from the clone",
                    ))?;
                info!(instance = %inst.id, role = %role, "a binding role of the source dropped from the clone");
            }
        }
        if restore.kind == RestoreKind::Recover {
            let put = self.reapply_bindings(op, inst, leader, cell).await?;
            info!(instance = %inst.id, roles = put, "the recorded bindings' roles put back");
        }
        let pushed = cell
            .client
            .push_history(leader)
            .await
            .map_err(retry("the clone's timeline history could not be archived"))?;
        info!(instance = %inst.id, files = ?pushed, "history files archived");
        self.store
            .transition(&op.instance_id, &op.id, |i, _| {
                if let Some(r) = i.restore.as_mut() {
                    r.roles_removed = true;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// A failed restore: retried on a fresh node when the archive could not be read (at most
    /// [`MAX_ATTEMPTS`] starts), else the clone's nodes removed and the operation failed.
    #[allow(clippy::too_many_arguments)]
    async fn restore_failed(
        &self,
        op: &OperationRecord,
        inst: &InstanceRecord,
        restore: &RestoreRecord,
        source: &str,
        status: &NodeStatus,
        failed: &str,
        pass: &mut Pass,
    ) -> Step {
        let failure = classify(failed);
        warn!(instance = %inst.id, node = %status.name, ?failure, "the restore failed: {failed}");
        if failure == Failure::Storage && restore.attempt + 1 < MAX_ATTEMPTS {
            if let Err(s) = self.start_again(op, inst, pass).await {
                return s;
            }
            return Step::retry(None, "the archive of the source could not be read", failed);
        }
        let reason = failure_reason(source, &failure, status);
        self.teardown_and_fail(op, inst, reason).await
    }

    /// Removes the clone's nodes, route and Patroni keys, then fails with `reason` (and
    /// [`REMOVED`]). The clone's repository is kept.
    async fn teardown_and_fail(
        &self,
        op: &OperationRecord,
        inst: &InstanceRecord,
        reason: String,
    ) -> Step {
        if let Err(s) = self.remove_nodes_and_keys(inst).await {
            return s;
        }
        if let Err(e) = self
            .store
            .transition(&op.instance_id, &op.id, |i, _| {
                i.nodes.clear();
                Ok(())
            })
            .await
        {
            return e.into();
        }
        if let Err(e) = self.sync_router().await {
            warn!("cannot update the router: {e}");
        }
        Step::Fail(format!("{reason}{REMOVED}"))
    }

    /// Resolves the requested point in the source's archive when the API did not: a disaster
    /// recovery (`RestoreKind::Recover`, which asks for the latest point of the instance's own
    /// archive and is never seen by the API), and clone records written before the API
    /// resolved targets at the 202. Stores the result, so a retried pass does not resolve again.
    async fn resolve_in_worker(
        &self,
        op: &OperationRecord,
        restore: &RestoreRecord,
        source: &str,
    ) -> Result<ResolvedTarget, Step> {
        use walarchive::window::Wanted;
        let config = crate::archive::walarchive_config(&self.config);
        let repo = crate::archive::open_with(&restore.source.repository, config.as_deref())
            .map_err(|e| Step::retry(None, "the archive of the source could not be read", e))?;
        let window = walarchive::window::compute(&repo)
            .await
            .map_err(|e| Step::retry(None, "the archive of the source could not be read", e))?;
        let bad = |what: &str| {
            warn!(instance = %op.instance_id, "a clone's recorded clone-at does not parse: {what}");
            Step::Fail(INTERNAL.into())
        };
        let wanted = match restore.requested.as_ref().and_then(|p| p.clone_at.as_ref()) {
            None => Wanted::Latest,
            Some(CloneAt::Time(t)) => Wanted::Time(parse_target_time(t).ok_or_else(|| bad(t))?),
            Some(CloneAt::Lsn(l)) => Wanted::Lsn(l.parse().map_err(|_| bad(l))?),
            Some(CloneAt::RestorePoint(n)) => Wanted::RestorePoint(n.clone()),
        };
        let r = walarchive::window::resolve(&repo, &window, &wanted, None)
            .await
            .map_err(|e| match e {
                walarchive::window::Error::Unrestorable(u) => Step::Fail(format!(
                    "The archive of {source} cannot give the clone's target: {u}. Nothing was created; deprovision this instance."
                )),
                other => Step::retry(None, "the archive of the source could not be read", other),
            })?;
        let resolved = crate::windows::resolved_target(&r);
        info!(instance = %op.instance_id, ?resolved, "restore target resolved by the worker");
        let stored = resolved.clone();
        self.store
            .transition(&op.instance_id, &op.id, |i, _| {
                if let Some(r) = i.restore.as_mut() {
                    r.resolved.get_or_insert_with(|| stored.clone());
                }
                Ok(())
            })
            .await?;
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::client::{RestoreProgress, RestoreReplay};
    use crate::cell::{NodePorts, RestoreStatus};

    fn status(restore: Option<RestoreStatus>) -> NodeStatus {
        NodeStatus {
            name: "n0".into(),
            instance_id: "i".into(),
            running: true,
            pid: Some(1),
            restarts: 0,
            ports: NodePorts {
                pg_port: 1,
                api_port: 2,
            },
            patroni: None,
            restore,
        }
    }

    fn resolved(target: TargetSpec) -> ResolvedTarget {
        ResolvedTarget {
            backup: "base_20261207T020000Z".into(),
            timeline: None,
            target,
            expect_lsn: "0/5A3F2D8".into(),
            expect_time: None,
        }
    }

    #[test]
    fn failures_are_classified() {
        assert_eq!(
            classify("FATAL:  recovery ended before configured recovery target was reached"),
            Failure::Missing
        );
        assert_eq!(
            classify("walarchive backup-fetch exited with status 8: walarchive: object damaged"),
            Failure::Damaged(8)
        );
        assert_eq!(
            classify("walarchive backup-fetch exited with status 7: timeout"),
            Failure::Storage
        );
        assert_eq!(
            classify("walarchive backup-fetch exited with status 2: walarchive: the recovery target LSN 0/7000000 cannot be restored: clone-at 0/7000000 is past the end"),
            Failure::Missing
        );
        assert_eq!(
            failure_reason("old-db", &Failure::Missing, &status(None)),
            "The archive of old-db ends before the clone's target: WAL between its base backup and the target is missing."
        );
        assert_eq!(
            classify("walarchive backup-fetch exited with status 2: bad"),
            Failure::Other
        );
        assert_eq!(
            classify("PostgreSQL did not start on the restored data directory"),
            Failure::Other
        );
        let s = status(Some(RestoreStatus {
            replay: Some(RestoreReplay {
                last_restored: "00000002000000000000005B".into(),
                restored_at: None,
            }),
            ..RestoreStatus::default()
        }));
        assert_eq!(
            failure_reason("old-db", &Failure::Missing, &s),
            "The archive of old-db ends before the clone's target: WAL after segment 00000002000000000000005B is missing."
        );
        assert_eq!(failure_reason("old-db", &Failure::Other, &s), INTERNAL);
    }

    #[test]
    fn progress_is_described() {
        let r = resolved(TargetSpec::Time("2026-12-07T10:15:00.000000Z".into()));
        assert_eq!(
            progress_description(RestoreKind::Clone, "old-db", &r, None),
            "starting the restore of base backup base_20261207T020000Z of old-db"
        );
        let gib = 1024 * 1024 * 1024;
        let s = status(Some(RestoreStatus {
            progress: Some(RestoreProgress {
                backup: "base_20261207T020000Z".into(),
                bytes_done: gib * 12 / 10,
                bytes_total: gib * 34 / 10,
                done: false,
            }),
            ..RestoreStatus::default()
        }));
        assert_eq!(
            progress_description(RestoreKind::Clone, "old-db", &r, Some(&s)),
            "restoring base backup base_20261207T020000Z of old-db (1.2 of 3.4 GiB)"
        );
        let mut s = s;
        s.restore.as_mut().unwrap().replay = Some(RestoreReplay {
            last_restored: "00000002000000000000005B".into(),
            restored_at: None,
        });
        assert_eq!(
            progress_description(RestoreKind::Clone, "old-db", &r, Some(&s)),
            "replaying WAL of old-db to 2026-12-07T10:15:00Z (at segment 00000002000000000000005B)"
        );
        let r = resolved(TargetSpec::Lsn("0/5A3F2D8".into()));
        assert!(
            progress_description(RestoreKind::Clone, "old-db", &r, Some(&s))
                .contains("to LSN 0/5A3F2D8")
        );
        assert_eq!(
            promoted_text(RestoreKind::Clone, "old-db"),
            "clone promoted"
        );
        assert_eq!(
            parse_target_time("2026-12-07 10:15:00.250000+00").map(time_text),
            Some("2026-12-07T10:15:00.25Z".into())
        );
    }

    #[test]
    fn a_recovery_is_described_as_one() {
        let r = resolved(TargetSpec::Lsn("0/5A3F2D8".into()));
        let d = |s: Option<&NodeStatus>| progress_description(RestoreKind::Recover, "db", &r, s);
        assert_eq!(
            d(None),
            "recovering db from its own archive: starting the restore of base backup base_20261207T020000Z"
        );
        let mut s = status(Some(RestoreStatus {
            progress: Some(RestoreProgress {
                backup: "base_20261207T020000Z".into(),
                bytes_done: 5 * 1024 * 1024,
                bytes_total: 10 * 1024 * 1024,
                done: false,
            }),
            ..RestoreStatus::default()
        }));
        assert_eq!(
            d(Some(&s)),
            "recovering db from its own archive: restoring base backup base_20261207T020000Z (5.0 of 10.0 MiB)"
        );
        s.restore.as_mut().unwrap().progress.as_mut().unwrap().done = true;
        assert_eq!(
            d(Some(&s)),
            "recovering db from its own archive: base backup base_20261207T020000Z restored; replaying WAL to LSN 0/5A3F2D8"
        );
        s.restore.as_mut().unwrap().replay = Some(RestoreReplay {
            last_restored: "00000002000000000000005B".into(),
            restored_at: None,
        });
        assert_eq!(
            d(Some(&s)),
            "recovering db from its own archive: replaying WAL to LSN 0/5A3F2D8 (at segment 00000002000000000000005B)"
        );
        assert_eq!(
            promoted_text(RestoreKind::Recover, "db"),
            "db recovered from its own archive"
        );
    }
}
