//! The self-test's steps 3 to 12, each an async function giving what it checked (a short
//! text for the `[ok]` line) or why it failed.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt as _;
use object_store::ObjectStoreExt as _;
use serde_json::json;
use tokio_postgres::NoTls;
use walarchive::storage::StorageError;

use super::{Run, TABLE};
use crate::cell::CellClient;
use crate::state::{is_selftest_id, InstanceState, SELFTEST_ID_PREFIX};
use crate::statebackup::StateBackup;

/// How long a connection through the router may take to work after a bind.
const CONNECT_WITHIN: Duration = Duration::from_secs(90);

impl Run {
    /// Step 3: the catalog offers the configured service and the plan the self-test uses.
    pub(super) async fn catalog(&self) -> Result<String, String> {
        let c = self.api.catalog().await?;
        let service = c["services"]
            .as_array()
            .and_then(|s| {
                s.iter()
                    .find(|s| s["id"].as_str() == Some(&self.config.service.id))
            })
            .ok_or_else(|| {
                format!(
                    "service {} is not in the catalog at {}",
                    self.config.service.id,
                    self.api.base()
                )
            })?;
        let plans = service["plans"].as_array().map_or(0, Vec::len);
        if !service["plans"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["id"].as_str() == Some(self.api.plan_id()))
        }) {
            return Err(format!("plan {} is not in the catalog", self.api.plan_id()));
        }
        Ok(format!(
            "service {}, {plans} plan(s), at {}",
            self.config.service.id,
            self.api.base()
        ))
    }

    /// Steps 4 and 8: provisions `id` (recorded for the guard before the request) and waits
    /// until the operation succeeded.
    pub(super) async fn provision(
        &self,
        id: &str,
        parameters: serde_json::Value,
    ) -> Result<String, String> {
        self.created.lock().expect("lock").push(id.to_string());
        let op = self.api.provision(id, parameters).await?;
        let within = self.config.worker.operation_timeout.0 + Duration::from_secs(60);
        self.api.wait(id, &op, within, false).await?;
        Ok(id.to_string())
    }

    /// Steps 5 and 9: binds `id` and connects through the router with the binding's
    /// credentials.
    async fn bind_and_connect(&self, id: &str) -> Result<tokio_postgres::Client, String> {
        let binding = format!("{id}-app");
        let creds = self.api.bind(id, &binding).await?;
        let start = std::time::Instant::now();
        loop {
            match connect(&creds.uri).await {
                Ok(c) => return Ok(c),
                Err(e) if start.elapsed() > CONNECT_WITHIN => {
                    return Err(format!(
                        "no connection through the router at {}:{} within {} s: {e}",
                        creds.hostname,
                        creds.port,
                        CONNECT_WITHIN.as_secs()
                    ))
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// Step 5: binds the source and writes rows 1 to 100.
    pub(super) async fn bind_and_write(&self) -> Result<String, String> {
        let db = self.bind_and_connect(&self.source).await?;
        db.batch_execute(&format!(
            "create table {TABLE} (n int primary key, at timestamptz not null default now()); \
             insert into {TABLE} (n) select generate_series(1, 100)"
        ))
        .await
        .map_err(|e| format!("write: {e}"))?;
        *self.db.lock().await = Some(db);
        Ok("100 rows".into())
    }

    /// The cell and node name of `id`'s leader.
    async fn leader(&self, id: &str) -> Result<(CellClient, String), String> {
        let inst = self
            .store
            .instance(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no record of {id}"))?
            .value;
        for n in &inst.nodes {
            let Some(cell) = self.config.cells.iter().find(|c| c.name == n.cell) else {
                continue;
            };
            let client = CellClient::new(&cell.url, cell.token.clone(), self.config.tls.as_ref())
                .map_err(|e| e.to_string())?;
            if let Ok(Some(s)) = client.node(&n.name).await {
                if s.is_leader() {
                    return Ok((client, n.name.clone()));
                }
            }
        }
        Err(format!(
            "{id} has no leader (nodes {:?})",
            inst.nodes.iter().map(|n| &n.name).collect::<Vec<_>>()
        ))
    }

    /// Step 6: a base backup taken by the leader's cell, as the worker's scheduled ones.
    pub(super) async fn backup(&self) -> Result<String, String> {
        let (cell, leader) = self.leader(&self.source).await?;
        let b = cell.backup(&leader).await.map_err(|e| e.to_string())?;
        Ok(format!(
            "{} on {leader}",
            b.summary["name"].as_str().unwrap_or("?")
        ))
    }

    /// Step 7: rows 101 to 200, committed 1 s after T (itself 1 s after row 100's commit);
    /// then the leader switches WAL, so the archive holds the commit after T.
    pub(super) async fn write_more(&self) -> Result<DateTime<Utc>, String> {
        let guard = self.db.lock().await;
        let db = guard.as_ref().ok_or("no connection from step 5")?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = Utc::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        db.batch_execute(&format!(
            "insert into {TABLE} (n) select generate_series(101, 200)"
        ))
        .await
        .map_err(|e| format!("write: {e}"))?;
        drop(guard);
        let (cell, leader) = self.leader(&self.source).await?;
        let s = cell
            .switch_wal(&leader)
            .await
            .map_err(|e| format!("switch WAL: {e}"))?;
        if !s.archived {
            return Err(format!("segment {} was not archived in time", s.segment));
        }
        Ok(t)
    }

    /// Step 8: a one-node clone of the source at `t`.
    pub(super) async fn clone_at(&self, t: DateTime<Utc>) -> Result<String, String> {
        let at = t.to_rfc3339_opts(SecondsFormat::Micros, true);
        self.provision(
            &self.clone,
            json!({ "node-count": 1, "clone-from": self.source, "clone-at": at }),
        )
        .await?;
        Ok(format!("{} at {at}", self.clone))
    }

    /// Step 9: the clone holds rows 1 to 100, no more.
    pub(super) async fn check_clone(&self) -> Result<String, String> {
        let db = self.bind_and_connect(&self.clone).await?;
        let row = db
            .query_one(
                &format!("select count(*), coalesce(max(n), 0) from {TABLE}"),
                &[],
            )
            .await
            .map_err(|e| format!("count: {e}"))?;
        let (count, max): (i64, i32) = (row.get(0), row.get(1));
        if (count, max) != (100, 100) {
            return Err(format!(
                "the clone holds {count} rows (up to {max}), not 100"
            ));
        }
        Ok("100 rows".into())
    }

    /// Step 10: deprovisions every instance the self-test asked for, and waits for each.
    pub(super) async fn deprovision_all(&self) -> Result<String, String> {
        *self.db.lock().await = None;
        let ids = self.created_ids();
        if ids.is_empty() {
            return Ok("nothing was created".into());
        }
        let mut failed = Vec::new();
        for id in &ids {
            if let Err(e) = self.deprovision(id).await {
                failed.push(format!("{id}: {e}"));
            }
        }
        if failed.is_empty() {
            Ok(ids.join(", "))
        } else {
            Err(failed.join("; "))
        }
    }

    async fn deprovision(&self, id: &str) -> Result<(), String> {
        let within = self.config.worker.operation_timeout.0 + Duration::from_secs(60);
        let start = std::time::Instant::now();
        loop {
            // An operation in progress (a provision the self-test gave up on) may refuse a
            // DELETE for a moment (422 ConcurrencyError): ask again.
            match self.api.deprovision(id).await {
                Ok(None) => return Ok(()),
                Ok(Some(op)) => return self.api.wait(id, &op, within, true).await,
                Err(e) if e.contains("HTTP 422") && start.elapsed() < within => {
                    tokio::time::sleep(Duration::from_secs(2)).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Step 11: purges the archive of every deleted self-test instance, then forgets its
    /// records. Only self-test ids are ever touched (checked here and by the store).
    pub(super) async fn purge_and_forget(&self) -> Result<String, String> {
        let ids = self.created_ids();
        if ids.is_empty() {
            return Ok("nothing was created".into());
        }
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for id in &ids {
            match self.purge_one(id).await {
                Ok(what) => done.push(what),
                Err(e) => failed.push(format!("{id}: {e}")),
            }
        }
        if failed.is_empty() {
            Ok(done.join("; "))
        } else {
            Err(failed.join("; "))
        }
    }

    async fn purge_one(&self, id: &str) -> Result<String, String> {
        if !is_selftest_id(id) {
            return Err("not a self-test instance: refused".into());
        }
        let Some(inst) = self.store.instance(id).await.map_err(|e| e.to_string())? else {
            return Ok(format!("{id}: no record"));
        };
        let inst = inst.value;
        if inst.state != InstanceState::Deleted {
            return Err(format!(
                "not deleted ({:?}): its archive is kept",
                inst.state
            ));
        }
        let mut objects = 0;
        for inc in inst.deleted_incarnations() {
            // Marked first, as the worker's purges: no clone of it is accepted from now on.
            self.store
                .mark_purging(id, inc.n)
                .await
                .map_err(|e| e.to_string())?;
            objects += self.delete_archive(&inc.repository).await?;
            objects += self.delete_rest(&inc.repository).await?;
        }
        self.store
            .forget_selftest(id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!("{id}: {objects} objects"))
    }

    /// `walarchive --repo URL delete everything --force --confirm` as the worker runs it: how
    /// many objects went (0 when there was no repository).
    async fn delete_archive(&self, repository: &str) -> Result<u64, String> {
        let bin = &self.config.nodes.walarchive;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("--repo")
            .arg(repository)
            .arg("--quiet")
            .args(["delete", "everything", "--force", "--confirm", "--json"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(p) = &self.config.repository.walarchive_config {
            cmd.env("WALARCHIVE_CONFIG", p);
        }
        let out = cmd
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        match out.status.code() {
            Some(0) => {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                    .map_err(|e| format!("walarchive delete printed no JSON ({e})"))?;
                Ok(v["objects_count"].as_u64().unwrap_or(0))
            }
            // No repository: the instance never archived anything.
            Some(6) => Ok(0),
            code => Err(format!(
                "walarchive delete everything on {repository} failed ({code:?}): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }

    /// What `delete everything` keeps (the repository's descriptor, which a purge keeps so
    /// that the prefix is never reused): a self-test's repository goes entirely, so that
    /// runs leave nothing. Only under `repository.base`.
    async fn delete_rest(&self, repository: &str) -> Result<u64, String> {
        let base = self.config.repository.base.trim_end_matches('/');
        if !repository.starts_with(&format!("{base}/{SELFTEST_ID_PREFIX}")) {
            return Err(format!(
                "{repository} is not a self-test repository under {base}: kept"
            ));
        }
        let (loc, policy) =
            crate::archive::open_storage(&self.config, repository).map_err(|e| e.to_string())?;
        let store = loc.store.clone();
        let prefix = loc.prefix.clone();
        let left: Vec<object_store::ObjectMeta> = walarchive::retry::retry(&policy, "list", || {
            let (store, prefix) = (store.clone(), prefix.clone());
            async move {
                store
                    .list(Some(&prefix))
                    .try_collect()
                    .await
                    .map_err(StorageError::from)
            }
        })
        .await
        .map_err(|e| format!("list {repository}: {e}"))?;
        for m in &left {
            store
                .delete(&m.location)
                .await
                .map_err(|e| format!("delete {}: {}", m.location, StorageError::from(e)))?;
        }
        Ok(left.len() as u64)
    }

    /// Step 12: the newest state snapshot opens and every record decodes.
    pub(super) async fn verify_state(&self) -> Result<String, String> {
        let backup = StateBackup::open(&self.config, self.store.clone())
            .map_err(|e| e.to_string())?
            .ok_or("no [state_backup]")?;
        let v = backup.verify().await.map_err(|e| e.to_string())?;
        Ok(format!(
            "{}: {} records, {} s old",
            v.name,
            v.records.values().sum::<usize>(),
            v.age_seconds
        ))
    }
}

/// A connection with a binding's URI (the router speaks plain PostgreSQL).
async fn connect(uri: &str) -> Result<tokio_postgres::Client, String> {
    let mut cfg: tokio_postgres::Config = uri.parse().map_err(|e| format!("invalid URI: {e}"))?;
    cfg.connect_timeout(Duration::from_secs(5));
    let (client, conn) = cfg.connect(NoTls).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
        .query_one("select 1", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(client)
}
