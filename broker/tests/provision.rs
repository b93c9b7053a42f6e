//! The provisioning worker end to end: the OSB API (in-process, `oneshot`) records
//! operations, a [`Worker`] executes them on three real cell agents (three zones) running
//! Patroni and PostgreSQL, archiving into a `file://` repository, and routes through its own
//! HAProxy.
//!
//! One test, in sequence, because each cluster costs seconds of two cores: a two-node
//! provision survives a worker restart in the middle, takes writes through the router and
//! archives WAL and a first backup; it scales to three nodes (while another instance is
//! provisioned and deleted during its provision, which cleans up) and down to one, keeping
//! its leader; a scheduled backup applies retention; a deprovision archives the last commit
//! (its leader switches WAL first), removes nodes, route and state but keeps the archive; the
//! same id provisioned again gets a new repository.
use testkit::broker as common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use serde_json::Value;

use common::broker::BrokerToml;
use common::cells::{local_sql, primary_as, wait_for, walarchive, walarchive_copy, Cell};
use common::etcd::etcd;
use common::osb::Api;
use common::rig::Rig;
use walarchive_broker::state::InstanceRecord;
use walarchive_broker::state::InstanceState;
use walarchive_broker::{BrokerConfig, Store, Worker};

/// Switches WAL on `inst`'s leader (as the superuser, over its cell's socket): the segment
/// it switched from.
async fn switch_wal(cells: &[Cell], inst: &InstanceRecord) -> String {
    let leader = leader_of(cells, &inst.id).await.expect("a leader");
    let node = inst
        .nodes
        .iter()
        .find(|n| n.name == leader)
        .expect("placed");
    let cell = cells
        .iter()
        .find(|c| c.name == node.cell)
        .expect("its cell");
    local_sql(
        cell,
        node.pg_port,
        "select pg_walfile_name(pg_switch_wal())",
    )
    .unwrap()
}

/// The names of `instance`'s nodes on each cell.
async fn nodes_on_cells(cells: &[Cell], instance: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for c in cells {
        let nodes = c.client().nodes().await.expect("cell answers");
        out.push(
            nodes
                .into_iter()
                .filter(|n| n.instance_id == instance)
                .map(|n| n.name)
                .collect(),
        );
    }
    out
}

/// The name of `instance`'s leader, as its cells report it.
async fn leader_of(cells: &[Cell], instance: &str) -> Option<String> {
    for c in cells {
        for n in c.client().nodes().await.expect("cell answers") {
            if n.instance_id == instance && n.is_leader() {
                return Some(n.name);
            }
        }
    }
    None
}

fn spawn_worker(
    config: Arc<BrokerConfig>,
    store: Store,
    wake: Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<()> {
    let w = Worker::new(config, store, wake).expect("worker");
    tokio::spawn(w.run(std::future::pending()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_update_backup_deprovision_reprovision() {
    // Bounded, so that a hang (a query waiting forever, say) fails here instead of CI's limit.
    tokio::time::timeout(Duration::from_secs(480), scenario())
        .await
        .expect("the scenario finishes within 8 minutes");
}

async fn scenario() {
    let t0 = Instant::now();
    let rig = Rig::start("provision", &["a", "b", "c"]).await;
    let (root, bin, base, cells) = (&rig.root, &rig.bin, &rig.base, &rig.cells);
    let mut t = rig.toml();
    t.plan = "plan-ha".into();
    t.backups = ("30s", 1);
    let prefix = rig.prefix();
    // archive_timeout at 10 minutes: within this test, a segment reaches the archive only
    // when it is switched (a backup, a promotion, the deprovision's switch, or `switch_wal`).
    let toml = t.render(&prefix);
    assert!(toml.contains("archive_timeout = \"60s\""), "{toml}");
    let toml = toml.replace("archive_timeout = \"60s\"", "archive_timeout = \"600s\"");
    let c = Api::new(&toml, &t.service, &t.plan);
    let store = c.store.clone();
    let config = c.state.config.clone();
    let wake = c.state.provisioner.clone();
    let diag = || {
        cells
            .iter()
            .map(|c| format!("--- cell {} ---\n{}\n", c.name, c.log_tail(15)))
            .collect::<String>()
            + &common::cells::tail(&root.join("haproxy").join("haproxy.log"), 10)
    };

    // --- Provision two nodes; the worker is restarted in the middle. ---
    let worker = spawn_worker(config.clone(), store.clone(), wake.clone());
    let op = c.provision("db1", 2).await;
    wait_for(
        "nodes placed and created",
        Duration::from_secs(60),
        || async {
            let i = c.store.instance("db1").await.ok()??.value;
            (i.nodes.len() == 2 && i.nodes.iter().all(|n| n.pg_port != 0)).then_some(())
        },
        diag,
    )
    .await;
    worker.abort();
    let _ = worker.await;
    eprintln!("worker restarted at {:.1} s", t0.elapsed().as_secs_f64());
    let secrets_before = c.store.instance_secrets("db1").await.unwrap().unwrap();
    let worker = spawn_worker(config.clone(), store.clone(), wake.clone());
    let (seen, s, b) = c.wait_op("db1", &op, Duration::from_secs(180), &diag).await;
    assert_eq!(
        (s, b["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{b}"
    );
    assert!(
        seen.iter().any(|d| d.contains("leader")),
        "no progress description seen: {seen:?}"
    );
    let inst = c.store.instance("db1").await.unwrap().unwrap().value;
    assert_eq!(inst.state, InstanceState::Ready);
    assert_eq!(inst.repository, format!("{base}/db1"));
    let zones: HashSet<&str> = inst.nodes.iter().map(|n| n.zone.as_str()).collect();
    assert_eq!(zones.len(), 2, "{:?}", inst.nodes);
    let secrets = c.store.instance_secrets("db1").await.unwrap().unwrap();
    assert_eq!(secrets, secrets_before, "secrets are generated once");
    let port = inst.port;
    // An application's binding: what connects through the router (the superuser does not).
    let uri = c.bind("db1", "app-1").await;
    let db = wait_for(
        "writes through the router",
        Duration::from_secs(20),
        || primary_as(uri.clone()),
        diag,
    )
    .await;
    db.batch_execute(
        "create table t (id int primary key); insert into t select generate_series(1, 100)",
    )
    .await
    .unwrap();
    let last = switch_wal(cells, &inst).await;
    let repo1 = inst.repository.clone();
    wait_for(
        "WAL in the repository",
        Duration::from_secs(30),
        || {
            let (bin, repo, last) = (bin.clone(), repo1.clone(), last.clone());
            async move {
                let out = walarchive(&bin, &["--repo", &repo, "wal-list", "--json"]).ok()?;
                out.contains(&last).then_some(())
            }
        },
        diag,
    )
    .await;
    let backups = walarchive(bin, &["--repo", &repo1, "backup-list", "--json"]).unwrap();
    assert!(backups.contains("base_"), "no first backup: {backups}");
    let first_backup_at = inst.last_backup_at.expect("first backup recorded");
    eprintln!("provisioned at {:.1} s", t0.elapsed().as_secs_f64());

    // --- The broker goes away: HAProxy keeps routing (it outlives the broker), and the next
    // broker adopts it (pid file) instead of starting a second one. ---
    let pid_file = root.join("haproxy").join("haproxy.pid");
    let haproxy_pid = std::fs::read_to_string(&pid_file)
        .expect("haproxy.pid")
        .trim()
        .to_string();
    worker.abort();
    let _ = worker.await;
    db.query_one("select 1", &[])
        .await
        .expect("routing goes on without the broker");
    assert!(
        primary_as(uri.clone()).await.is_some(),
        "new connections are routed without the broker"
    );
    let worker = spawn_worker(config.clone(), store.clone(), wake.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        haproxy_pid,
        "the new broker adopted HAProxy"
    );
    assert!(std::path::Path::new(&format!("/proc/{haproxy_pid}")).exists());
    db.query_one("select 1", &[])
        .await
        .expect("the same connection after the new broker's reload");

    // --- Scale 2 -> 3 -> 1. ---
    let op = c.update("db1", 3).await;
    // --- Meanwhile, a DELETE during another instance's provision cleans up what it
    // created (two instances' operations run concurrently). ---
    let op2 = c.provision("db2", 1).await;
    wait_for(
        "db2's node created",
        Duration::from_secs(60),
        || async {
            let i = c.store.instance("db2").await.ok()??.value;
            i.nodes.iter().any(|n| n.pg_port != 0).then_some(())
        },
        diag,
    )
    .await;
    let port2 = c.store.instance("db2").await.unwrap().unwrap().value.port;
    let del2 = c.deprovision("db2").await;
    let (_, s, b) = c.wait_op("db1", &op, Duration::from_secs(150), &diag).await;
    assert_eq!(
        (s, b["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{b}"
    );
    let on_cells = nodes_on_cells(cells, "db1").await;
    assert!(on_cells.iter().all(|n| n.len() == 1), "{on_cells:?}");
    let inst = c.store.instance("db1").await.unwrap().unwrap().value;
    assert_eq!((inst.node_count, inst.nodes.len()), (3, 3));
    // The DELETE of db2 (during its provision) cleaned up.
    let (_, s, _) = c
        .wait_op("db2", &del2, Duration::from_secs(60), &diag)
        .await;
    assert_eq!(s, StatusCode::GONE);
    let (_, b) = c
        .call(
            Method::GET,
            &format!("/v2/service_instances/db2/last_operation?operation={op2}"),
            None,
        )
        .await;
    assert_eq!(b["state"], "failed", "{b}");
    assert!(nodes_on_cells(cells, "db2").await.iter().all(Vec::is_empty));
    assert_eq!(c.store.port_owner(port2).await.unwrap(), None);
    let patroni_keys = c
        .store
        .etcd()
        .get_prefix(format!("{prefix}/patroni/db2/").as_bytes())
        .await
        .unwrap();
    assert!(patroni_keys.is_empty(), "Patroni keys of db2 left");
    assert_eq!(c.store.instance_secrets("db2").await.unwrap(), None);

    // HAProxy was reloaded meanwhile (db1's backends changed, db2's route came and went):
    // a connection opened through the router before is still served.
    db.query_one("select 1", &[])
        .await
        .expect("a connection through the router survives the router's reloads");

    let db = wait_for(
        "writes after scale-up",
        Duration::from_secs(20),
        || primary_as(uri.clone()),
        diag,
    )
    .await;
    db.batch_execute("insert into t select generate_series(101, 200)")
        .await
        .unwrap();

    // --- Failover of the provisioned instance: the leader's whole cell dies. The same
    // router port takes writes on a promoted replica, with every replicated row; the cell
    // comes back and its node rejoins. ---
    let leader = leader_of(cells, "db1").await.expect("a leader");
    let victim = {
        let mut found = None;
        for (i, cell) in cells.iter().enumerate() {
            let names = cell.client().nodes().await.expect("cell answers");
            if names.iter().any(|n| n.name == leader) {
                found = Some(i);
            }
        }
        found.expect("the leader's cell")
    };
    let old_port = c
        .store
        .instance("db1")
        .await
        .unwrap()
        .unwrap()
        .value
        .nodes
        .iter()
        .find(|n| n.name == leader)
        .expect("the leader is placed")
        .pg_port;
    // Asynchronous replication here (tests/cells.rs covers synchronous mode): kill only once
    // both replicas have replayed every row, then none may be missing.
    let lsn: String = db
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    // (Replication's progress is the superuser's to see: on the leader's socket.)
    wait_for(
        "both replicas replayed the last insert",
        Duration::from_secs(30),
        || {
            let sql = format!(
                "select count(*) from pg_stat_replication where replay_lsn >= '{lsn}'::pg_lsn"
            );
            let cell = &cells[victim];
            async move {
                let n: i64 = local_sql(cell, old_port, &sql).ok()?.parse().ok()?;
                (n >= 2).then_some(())
            }
        },
        diag,
    )
    .await;
    drop(db);
    cells[victim].kill();
    let killed = Instant::now();
    let db = wait_for(
        "writes through the router on the promoted replica",
        Duration::from_secs(60),
        || async {
            let db = primary_as(uri.clone()).await?;
            let served_by: i32 = db
                .query_one("select current_setting('port')::int", &[])
                .await
                .ok()?
                .get(0);
            if served_by == i32::from(old_port) {
                return None; // the old leader, still dying
            }
            db.batch_execute("create table if not exists failover (x int)")
                .await
                .ok()?;
            Some(db)
        },
        diag,
    )
    .await;
    eprintln!(
        "failover of a provisioned instance: {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    let n: i64 = db
        .query_one("select count(*) from t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 200, "rows committed before the leader's cell died");
    let mut new_leader = None;
    for (i, cell) in cells.iter().enumerate() {
        if i == victim {
            continue;
        }
        for n in cell.client().nodes().await.expect("cell answers") {
            if n.instance_id == "db1" && n.is_leader() {
                new_leader = Some(n.name);
            }
        }
    }
    assert!(
        new_leader.is_some() && new_leader.as_deref() != Some(leader.as_str()),
        "{new_leader:?}"
    );
    db.batch_execute("drop table failover").await.unwrap();
    cells[victim].restart();
    cells[victim].wait_ready().await;
    wait_for(
        "the old leader back as a replica",
        Duration::from_secs(120),
        || async {
            let nodes = cells[victim].client().nodes().await.ok()?;
            nodes
                .iter()
                .any(|n| n.name == leader && n.role() == Some("replica"))
                .then_some(())
        },
        diag,
    )
    .await;

    // Scaling down removes replicas only: the leader stays.
    let leader_before = leader_of(cells, "db1").await;
    let op = c.update("db1", 1).await;
    let (seen, s, b) = c.wait_op("db1", &op, Duration::from_secs(120), &diag).await;
    assert_eq!(
        (s, b["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{b}"
    );
    assert!(
        seen.iter().any(|d| d.contains("removing replica")),
        "no progress while removing replicas: {seen:?}"
    );
    let on_cells = nodes_on_cells(cells, "db1").await;
    assert_eq!(
        on_cells.iter().map(Vec::len).sum::<usize>(),
        1,
        "{on_cells:?}"
    );
    let inst = c.store.instance("db1").await.unwrap().unwrap().value;
    assert_eq!((inst.node_count, inst.nodes.len()), (1, 1));
    assert_eq!(Some(inst.nodes[0].name.clone()), leader_before);
    let db = wait_for(
        "writes after scale-down",
        Duration::from_secs(30),
        || primary_as(uri.clone()),
        diag,
    )
    .await;
    db.batch_execute("insert into t select generate_series(201, 300)")
        .await
        .unwrap();
    let n: i64 = db
        .query_one("select count(*) from t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 300);
    eprintln!("scaled at {:.1} s", t0.elapsed().as_secs_f64());

    // --- A scheduled backup, then retention keeps one. ---
    wait_for(
        "a scheduled backup",
        Duration::from_secs(90),
        || async {
            let i = c.store.instance("db1").await.ok()??.value;
            (i.last_backup_at? > first_backup_at).then_some(())
        },
        diag,
    )
    .await;
    let list: Value = serde_json::from_str(
        &walarchive(bin, &["--repo", &repo1, "backup-list", "--json"]).unwrap(),
    )
    .unwrap();
    let count = list
        .as_array()
        .map(Vec::len)
        .or_else(|| list["backups"].as_array().map(Vec::len));
    assert_eq!(count, Some(1), "retain = 1: {list}");

    // --- Deprovision: nodes, route and state gone; the archive stays, with the last commit
    // (the leader switched WAL and waited for the archiver first, design §2.3). ---
    db.batch_execute("insert into t values (301)")
        .await
        .unwrap();
    let row = db
        .query_one(
            "select pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())",
            &[],
        )
        .await
        .unwrap();
    let (commit_lsn, commit_segment): (String, String) = (row.get(0), row.get(1));
    let op = c.deprovision("db1").await;
    let (seen, s, _) = c.wait_op("db1", &op, Duration::from_secs(60), &diag).await;
    assert_eq!(s, StatusCode::GONE);
    assert!(
        seen.iter().any(|d| d.contains("archiving the last WAL")),
        "{seen:?}"
    );
    let wal = walarchive(bin, &["--repo", &repo1, "wal-list", "--json"]).unwrap();
    assert!(
        wal.contains(&commit_segment),
        "the segment of the last commit ({commit_segment}, {commit_lsn}) is not archived: {wal}"
    );
    let final_lsn: walarchive::Lsn = c
        .store
        .instance("db1")
        .await
        .unwrap()
        .unwrap()
        .value
        .final_lsn
        .expect("final_lsn recorded")
        .parse()
        .unwrap();
    assert!(
        final_lsn >= commit_lsn.parse().unwrap(),
        "{final_lsn} < {commit_lsn}"
    );
    assert!(nodes_on_cells(cells, "db1").await.iter().all(Vec::is_empty));
    let inst = c.store.instance("db1").await.unwrap().unwrap().value;
    assert_eq!(inst.state, InstanceState::Deleted);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "router still listens"
    );
    // (Retention removed the WAL older than the newest backup, `last` included.)
    let wal: Value =
        serde_json::from_str(&walarchive(bin, &["--repo", &repo1, "wal-list", "--json"]).unwrap())
            .unwrap();
    assert!(
        wal.as_array()
            .is_some_and(|a| a.iter().any(|e| e["kind"] == "segment")),
        "archive not kept: {wal}"
    );
    let kept = walarchive(bin, &["--repo", &repo1, "backup-list", "--json"]).unwrap();
    assert!(kept.contains("base_"), "backups not kept: {kept}");

    // --- The same id again: a new incarnation with its own repository. ---
    let op = c.provision("db1", 1).await;
    let (_, s, b) = c.wait_op("db1", &op, Duration::from_secs(120), &diag).await;
    assert_eq!(
        (s, b["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{b}"
    );
    let inst = c.store.instance("db1").await.unwrap().unwrap().value;
    assert_eq!(inst.repository, format!("{base}/db1.2"));
    assert_eq!(inst.incarnation, 2);
    let pw2 = c.store.instance_secrets("db1").await.unwrap().unwrap();
    assert_ne!(pw2.superuser_password, secrets.superuser_password);
    let uri2 = c.bind("db1", "app-2").await;
    let db = wait_for(
        "writes to the new incarnation",
        Duration::from_secs(20),
        || primary_as(uri2.clone()),
        diag,
    )
    .await;
    let n: i64 = db
        .query_one("select count(*) from pg_tables where tablename = 't'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a fresh cluster");
    let backups = walarchive(bin, &["--repo", &inst.repository, "backup-list", "--json"]).unwrap();
    assert!(backups.contains("base_"), "{backups}");

    // A new id whose repository already holds an archive (left by another broker, or a
    // broker that lost its etcd) cannot be provisioned: a new cluster would archive into
    // another cluster's archive. (`db1.2` is not such an id: its repository is `_db1_2E2`,
    // apart from the second incarnation of `db1`, see tests/ids.rs.)
    let occupied = base.strip_prefix("file://").unwrap();
    let st = std::process::Command::new("cp")
        .args([
            "-a",
            &format!("{occupied}/db1"),
            &format!("{occupied}/occupied"),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let op = c.provision("occupied", 1).await;
    let (_, s, b) = c
        .wait_op("occupied", &op, Duration::from_secs(30), &diag)
        .await;
    assert_eq!(
        (s, b["state"].as_str()),
        (StatusCode::OK, Some("failed")),
        "{b}"
    );
    assert!(
        b["description"]
            .as_str()
            .unwrap()
            .contains("already holds an archive"),
        "{b}"
    );
    assert!(!b["description"].as_str().unwrap().contains('/'), "{b}");
    assert!(nodes_on_cells(cells, "occupied")
        .await
        .iter()
        .all(Vec::is_empty));

    // The same with the descriptor deleted: walarchive's objects without their descriptor
    // are an archive too (`wal-list` refuses them with "no descriptor", naming repo-repair).
    let st = std::process::Command::new("cp")
        .args([
            "-a",
            &format!("{occupied}/db1"),
            &format!("{occupied}/headless"),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::remove_file(format!("{occupied}/headless/walarchive.repo")).unwrap();
    let listed = walarchive(
        bin,
        &["--repo", &format!("{base}/headless"), "wal-list", "--json"],
    )
    .unwrap_err();
    assert!(
        listed.contains("but no descriptor") && listed.contains("repo-repair"),
        "{listed}"
    );
    let op = c.provision("headless", 1).await;
    let (_, s, b) = c
        .wait_op("headless", &op, Duration::from_secs(30), &diag)
        .await;
    assert_eq!(
        (s, b["state"].as_str()),
        (StatusCode::OK, Some("failed")),
        "{b}"
    );
    assert!(
        b["description"]
            .as_str()
            .unwrap()
            .contains("already holds an archive"),
        "{b}"
    );
    assert!(nodes_on_cells(cells, "headless")
        .await
        .iter()
        .all(Vec::is_empty));

    worker.abort();
    let _ = worker.await;
    // The router outlives the broker by design: stop it here.
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        if let Ok(pid) = pid.trim().parse::<u32>() {
            walarchive_broker::process::signal(pid, walarchive_broker::process::Signal::SIGTERM);
        }
    }
    // Leave no nodes running.
    for cell in cells {
        for n in cell.client().nodes().await.unwrap() {
            let _ = cell.client().delete_node(&n.name).await;
        }
    }
    eprintln!("total {:.1} s", t0.elapsed().as_secs_f64());
}

/// A provision that cannot be placed fails at once with a reason the platform shows, and
/// the instance can then be deprovisioned (no cells: nothing to remove).
#[tokio::test]
async fn a_provision_without_enough_cells_fails_with_a_reason() {
    let etcd = etcd();
    let dir = tempfile::tempdir().unwrap();
    let bin = walarchive_copy(dir.path());
    let mut t = BrokerToml::new(dir.path(), "file:///nonexistent", &bin);
    t.router_ports = 1;
    t.worker = ("1s", "10m");
    t.outlive_router = false;
    let prefix = format!("/broker{}", etcd.fresh_prefix());
    let c = Api::new(&t.render(&prefix), &t.service, &t.plan);
    let worker = spawn_worker(
        c.state.config.clone(),
        c.store.clone(),
        c.state.provisioner.clone(),
    );
    let op = c.provision("nowhere", 2).await;
    let (_, s, b) = c
        .wait_op("nowhere", &op, Duration::from_secs(30), &String::new)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["state"], "failed", "{b}");
    assert!(
        b["description"]
            .as_str()
            .unwrap()
            .contains("Not enough cells"),
        "{b}"
    );
    let inst = c.store.instance("nowhere").await.unwrap().unwrap().value;
    assert_eq!(inst.state, InstanceState::Failed);
    let op = c.deprovision("nowhere").await;
    let (_, s, _) = c
        .wait_op("nowhere", &op, Duration::from_secs(30), &String::new)
        .await;
    assert_eq!(s, StatusCode::GONE);
    worker.abort();
    let _ = worker.await;
}
