//! The provisioning worker end to end: the OSB API (in-process, `oneshot`) records
//! operations, a [`Worker`] executes them on three real cell agents (three zones) running
//! Patroni and PostgreSQL, archiving into a `file://` repository, and routes through its own
//! HAProxy.
//!
//! One test, in sequence, because each cluster costs seconds of two cores: a two-node
//! provision survives a worker restart in the middle, takes writes through the router and
//! archives WAL and a first backup; it scales to three nodes (while another instance is
//! provisioned and deleted during its provision, which cleans up) and down to one, keeping
//! its leader; a scheduled backup applies retention; a deprovision removes nodes, route and
//! state but keeps the archive; the same id provisioned again gets a new repository.
mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use common::cells::{
    file_repository, free_port, primary, test_root, wait_for, walarchive, walarchive_copy, Cell,
};
use common::etcd::etcd;
use walarchive_broker::state::InstanceState;
use walarchive_broker::{app, AppState, BrokerConfig, EtcdClient, NoBinder, Store, Worker};

const SERVICE: &str = "svc-1";
const PLAN: &str = "plan-ha";
const PASSWORD: &str = "platform-pw";

struct Ctx {
    app: Router,
    state: AppState,
    store: Store,
}

impl Ctx {
    /// The API (without a binder) and the store of a broker configured by `text`, with its
    /// state under `prefix` in etcd.
    fn new(text: &str, prefix: &str) -> Ctx {
        let config = BrokerConfig::parse(text, "test").expect("configuration");
        let store = Store::new(
            EtcdClient::new(&config.etcd.endpoints, Duration::from_secs(5)).unwrap(),
            prefix.to_string(),
        );
        let state = AppState::new(config, store.clone(), Arc::new(NoBinder));
        Ctx {
            app: app(state.clone()),
            state,
            store,
        }
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("platform:{PASSWORD}"))
        );
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, auth)
            .header("X-Broker-API-Version", "2.17")
            .header(header::CONTENT_TYPE, "application/json")
            .body(match body {
                Some(b) => Body::from(b.to_string()),
                None => Body::empty(),
            })
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn provision(&self, id: &str, nodes: u8) -> String {
        let (s, b) = self
            .call(
                Method::PUT,
                &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
                Some(json!({
                    "service_id": SERVICE, "plan_id": PLAN,
                    "organization_guid": "org", "space_guid": "space",
                    "context": {"platform": "test", "instance_name": id},
                    "parameters": {"node-count": nodes},
                })),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        b["operation"].as_str().unwrap().to_string()
    }

    async fn update(&self, id: &str, nodes: u8) -> String {
        let (s, b) = self
            .call(
                Method::PATCH,
                &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
                Some(json!({"service_id": SERVICE, "parameters": {"node-count": nodes}})),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        b["operation"].as_str().unwrap().to_string()
    }

    async fn deprovision(&self, id: &str) -> String {
        let (s, b) = self
            .call(
                Method::DELETE,
                &format!(
                    "/v2/service_instances/{id}?accepts_incomplete=true&service_id={SERVICE}&plan_id={PLAN}"
                ),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        b["operation"].as_str().unwrap().to_string()
    }

    /// Polls last_operation until it is no longer in progress; the descriptions seen and
    /// the final (status, body).
    async fn wait_op(
        &self,
        id: &str,
        op: &str,
        timeout: Duration,
        diag: &dyn Fn() -> String,
    ) -> (Vec<String>, StatusCode, Value) {
        let start = Instant::now();
        let mut seen = Vec::new();
        loop {
            let (s, b) = self
                .call(
                    Method::GET,
                    &format!("/v2/service_instances/{id}/last_operation?operation={op}"),
                    None,
                )
                .await;
            if s == StatusCode::OK && b["state"] == "in progress" {
                let d = b["description"].as_str().unwrap_or_default().to_string();
                if seen.last() != Some(&d) {
                    eprintln!("  {id}: {d}");
                    seen.push(d);
                }
            } else {
                eprintln!(
                    "{id} operation done in {:.1} s: {s} {b}",
                    start.elapsed().as_secs_f64()
                );
                return (seen, s, b);
            }
            assert!(
                start.elapsed() < timeout,
                "operation {op} of {id} timed out\n{}",
                diag()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
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
    let etcd = etcd();
    let root = test_root("provision");
    let bin = walarchive_copy(&root);
    let base = file_repository(&root);

    let cells = vec![
        Cell::start(&root, "a"),
        Cell::start(&root, "b"),
        Cell::start(&root, "c"),
    ];
    for c in &cells {
        c.wait_ready().await;
    }
    let pw_file = root.join("password");
    std::fs::write(&pw_file, PASSWORD).unwrap();
    let mut cells_toml = String::new();
    for (c, zone) in cells.iter().zip(["za", "zb", "zc"]) {
        let tf = root.join(format!("token-{}", c.name));
        std::fs::write(&tf, c.token.expose()).unwrap();
        cells_toml += &format!(
            "[[cells]]\nname = \"{}\"\nurl = \"{}\"\nzone = \"{zone}\"\nhost = \"127.0.0.1\"\ntoken_file = \"{}\"\n",
            c.name,
            c.url,
            tf.display()
        );
    }
    let port_min = free_port();
    let prefix = format!("/broker{}", etcd.fresh_prefix());
    let text = format!(
        r#"
archive_timeout = "60s"
[credentials]
username = "platform"
password_file = "{pw}"
[service]
id = "{SERVICE}"
name = "pg"
description = "HA PostgreSQL"
[[service.plans]]
id = "{PLAN}"
name = "ha"
description = "two nodes"
node_count = 2
[repository]
base = "{base}"
[etcd]
endpoints = ["{endpoint}"]
prefix = "{prefix}"
{cells_toml}
[router]
host = "127.0.0.1"
bind_address = "127.0.0.1"
port_min = {port_min}
port_max = {port_max}
haproxy_config = "{haproxy}/haproxy.cfg"
[backups]
interval = "30s"
retain = 1
[nodes]
walarchive = "{bin}"
ttl = 10
loop_wait = 2
retry_timeout = 4
wal_segsize_mb = 1
[worker]
poll_interval = "2s"
operation_timeout = "4m"
"#,
        pw = pw_file.display(),
        endpoint = etcd.endpoint(),
        port_max = port_min + 5,
        haproxy = root.join("haproxy").display(),
        bin = bin.display(),
    );
    let c = Ctx::new(&text, &prefix);
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
    let pw = secrets.superuser_password.expose().to_string();
    let port = inst.port;
    let db = wait_for(
        "writes through the router",
        Duration::from_secs(20),
        || primary(port, &pw),
        diag,
    )
    .await;
    db.batch_execute(
        "create table t (id int primary key); insert into t select generate_series(1, 100)",
    )
    .await
    .unwrap();
    let last: String = db
        .query_one("select pg_walfile_name(pg_switch_wal())", &[])
        .await
        .unwrap()
        .get(0);
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
    let backups = walarchive(&bin, &["--repo", &repo1, "backup-list", "--json"]).unwrap();
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
        primary(port, &pw).await.is_some(),
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
    let on_cells = nodes_on_cells(&cells, "db1").await;
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
    assert!(nodes_on_cells(&cells, "db2")
        .await
        .iter()
        .all(Vec::is_empty));
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
        || primary(port, &pw),
        diag,
    )
    .await;
    db.batch_execute("insert into t select generate_series(101, 200)")
        .await
        .unwrap();

    // --- Failover of the provisioned instance: the leader's whole cell dies. The same
    // router port takes writes on a promoted replica, with every replicated row; the cell
    // comes back and its node rejoins. ---
    let leader = leader_of(&cells, "db1").await.expect("a leader");
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
    wait_for(
        "both replicas replayed the last insert",
        Duration::from_secs(30),
        || {
            let (db, lsn) = (&db, lsn.clone());
            async move {
                let row = db
                    .query_one(
                        "select count(*) from pg_stat_replication \
                         where replay_lsn >= $1::text::pg_lsn",
                        &[&lsn],
                    )
                    .await
                    .ok()?;
                (row.get::<_, i64>(0) >= 2).then_some(())
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
            let db = primary(port, &pw).await?;
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
    let leader_before = leader_of(&cells, "db1").await;
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
    let on_cells = nodes_on_cells(&cells, "db1").await;
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
        || primary(port, &pw),
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
        &walarchive(&bin, &["--repo", &repo1, "backup-list", "--json"]).unwrap(),
    )
    .unwrap();
    let count = list
        .as_array()
        .map(Vec::len)
        .or_else(|| list["backups"].as_array().map(Vec::len));
    assert_eq!(count, Some(1), "retain = 1: {list}");

    // --- Deprovision: nodes, route and state gone; the archive stays. ---
    let op = c.deprovision("db1").await;
    let (_, s, _) = c.wait_op("db1", &op, Duration::from_secs(60), &diag).await;
    assert_eq!(s, StatusCode::GONE);
    assert!(nodes_on_cells(&cells, "db1")
        .await
        .iter()
        .all(Vec::is_empty));
    let inst = c.store.instance("db1").await.unwrap().unwrap().value;
    assert_eq!(inst.state, InstanceState::Deleted);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "router still listens"
    );
    // (Retention removed the WAL older than the newest backup, `last` included.)
    let wal: Value =
        serde_json::from_str(&walarchive(&bin, &["--repo", &repo1, "wal-list", "--json"]).unwrap())
            .unwrap();
    assert!(
        wal.as_array()
            .is_some_and(|a| a.iter().any(|e| e["kind"] == "segment")),
        "archive not kept: {wal}"
    );
    let kept = walarchive(&bin, &["--repo", &repo1, "backup-list", "--json"]).unwrap();
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
    assert_ne!(pw2.superuser_password.expose(), pw);
    let db = wait_for(
        "writes to the new incarnation",
        Duration::from_secs(20),
        || primary(inst.port, pw2.superuser_password.expose()),
        diag,
    )
    .await;
    let n: i64 = db
        .query_one("select count(*) from pg_tables where tablename = 't'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a fresh cluster");
    let backups = walarchive(&bin, &["--repo", &inst.repository, "backup-list", "--json"]).unwrap();
    assert!(backups.contains("base_"), "{backups}");

    // An id whose repository already holds an archive (here: the second incarnation of
    // db1's) cannot be provisioned.
    let op = c.provision("db1.2", 1).await;
    let (_, s, b) = c
        .wait_op("db1.2", &op, Duration::from_secs(30), &diag)
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
    assert!(nodes_on_cells(&cells, "db1.2")
        .await
        .iter()
        .all(Vec::is_empty));

    worker.abort();
    let _ = worker.await;
    // The router outlives the broker by design: stop it here.
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    // Leave no nodes running.
    for cell in &cells {
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
    let pw_file = dir.path().join("password");
    std::fs::write(&pw_file, PASSWORD).unwrap();
    let prefix = format!("/broker{}", etcd.fresh_prefix());
    let port_min = free_port();
    let bin = walarchive_copy(dir.path());
    let text = format!(
        r#"
[credentials]
username = "platform"
password_file = "{pw}"
[service]
id = "{SERVICE}"
name = "pg"
description = "HA PostgreSQL"
[[service.plans]]
id = "{PLAN}"
name = "ha"
description = "two nodes"
node_count = 2
[repository]
base = "file:///nonexistent"
[etcd]
endpoints = ["{endpoint}"]
prefix = "{prefix}"
[router]
host = "127.0.0.1"
bind_address = "127.0.0.1"
port_min = {port_min}
port_max = {port_min}
haproxy_config = "{haproxy}/haproxy.cfg"
outlive_broker = false
[nodes]
walarchive = "{bin}"
[worker]
poll_interval = "1s"
"#,
        bin = bin.display(),
        pw = pw_file.display(),
        endpoint = etcd.endpoint(),
        haproxy = dir.path().join("haproxy").display(),
    );
    let c = Ctx::new(&text, &prefix);
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
