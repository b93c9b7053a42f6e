//! Reads from hot standbys and client-side failover, end to end: the OSB API (in-process)
//! and a [`walarchive_broker::Worker`] on three real cell agents (Patroni, PostgreSQL) with
//! the worker's own HAProxy, one two-node instance in synchronous mode with
//! `synchronous_commit = remote_apply`.
//!
//! One scenario, because a cluster costs seconds of two cores and every step needs the one
//! before: the worker gives a read-only port to an instance recorded without one (as before
//! read-only ports existed); a binding's `read_only_uri` reaches the replica, sees every row
//! committed through the primary port the moment the commit returns, and refuses writes;
//! `uri_multihost` (tokio-postgres, `target_session_attrs=read-write`) finds the primary
//! among the nodes directly; the leader's cell dies: the primary port and the multi-host URI
//! reach the promoted replica, the read-only port falls back to it (no replica left), and
//! once the old node rejoins the read-only port reaches a replica again.
use testkit::broker as common;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;

use common::cells::{connect, primary_as, wait_for};
use common::osb::Api;
use common::rig::Rig;
use walarchive_broker::state::InstanceRecord;

/// A session on `uri` and whether its server is in recovery (a replica); `None` while it
/// cannot connect.
async fn session(uri: &str) -> Option<(tokio_postgres::Client, bool)> {
    let c = connect(&with_timeout(uri)).await.ok()?;
    let r: bool = c
        .query_one("select pg_is_in_recovery()", &[])
        .await
        .ok()?
        .get(0);
    Some((c, r))
}

/// `uri` with a connect timeout (a dead node's port must not hold a test up).
fn with_timeout(uri: &str) -> String {
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}connect_timeout=3")
}

/// The PostgreSQL port of the server behind `c`.
async fn port_of(c: &tokio_postgres::Client) -> u16 {
    let p: i32 = c
        .query_one("select current_setting('port')::int", &[])
        .await
        .unwrap()
        .get(0);
    u16::try_from(p).unwrap()
}

/// Waits until Patroni counts `standby` as the synchronous standby of `inst` (its `/sync`
/// key names it): only then may it be promoted when the leader dies. PostgreSQL reports it
/// `sync` earlier, as soon as it is named in `synchronous_standby_names`; Patroni waits
/// until it has caught up (with `remote_apply`, until it reported the leader's flush LSN
/// replayed, which an idle standby reports every `wal_receiver_status_interval`).
async fn wait_for_sync(
    store: &walarchive_broker::Store,
    inst: &InstanceRecord,
    standby: &str,
    diag: &dyn Fn() -> String,
) {
    let key = format!("{}/patroni/{}/sync", store.prefix(), inst.scope());
    wait_for(
        &format!("{standby} is Patroni's synchronous standby"),
        Duration::from_secs(60),
        || async {
            let kv = store.etcd().get(key.as_bytes()).await.ok()??;
            let v: Value = serde_json::from_slice(&kv.value).ok()?;
            (v["sync_standby"].as_str()? == standby).then_some(())
        },
        diag,
    )
    .await;
}

/// How often HAProxy's log says server `server` of `block` went down.
fn downs(log: &std::path::Path, block: &str, server: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(&format!("Server {block}/{server} is DOWN"))
        .count()
}

async fn count(c: &tokio_postgres::Client) -> i64 {
    c.query_one("select count(*) from t", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_port_and_multihost_uri_through_a_failover() {
    tokio::time::timeout(Duration::from_secs(420), scenario())
        .await
        .expect("the scenario finishes within 7 minutes");
}

async fn scenario() {
    let t0 = Instant::now();
    let rig = Rig::start("replicas", &["a", "b", "c"]).await;
    let (root, cells) = (&rig.root, &rig.cells);
    let t = rig.toml();
    let prefix = rig.prefix();
    let toml = t.render(&prefix);
    assert!(toml.contains("wal_segsize_mb = 1\n"), "{toml}");
    // Synchronous mode with commits waiting until the standby applied them: reads on the
    // replica see every commit that returned.
    let toml = toml.replace(
        "wal_segsize_mb = 1\n",
        "wal_segsize_mb = 1\nsynchronous = true\nsynchronous_commit = \"remote_apply\"\n",
    );
    let c = Api::new(&toml, &t.service, &t.plan);
    let diag = || {
        cells
            .iter()
            .map(|c| format!("--- cell {} ---\n{}\n", c.name, c.log_tail(15)))
            .collect::<String>()
            + &common::cells::tail(&root.join("haproxy").join("haproxy.log"), 10)
    };

    // --- Provision two nodes. ---
    let op = c.provision("ro1", 2).await;
    let worker = c.spawn_worker();
    let (_, s, b) = c.wait_op("ro1", &op, Duration::from_secs(180), &diag).await;
    assert_eq!(
        (s, b["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{b}"
    );
    let inst = c.store.instance("ro1").await.unwrap().unwrap().value;
    let given = inst
        .read_only_port
        .expect("the worker gave a read-only port");
    assert_ne!(given, inst.port);
    eprintln!("provisioned at {:.1} s", t0.elapsed().as_secs_f64());

    // --- An instance recorded before read-only ports existed: its record without the
    // field and no reservation. The worker gives it one (the first free port again). ---
    worker.abort();
    let _ = worker.await;
    let key = c.store.instance_key("ro1");
    let etcd_client = c.store.etcd();
    let raw = etcd_client.get(key.as_bytes()).await.unwrap().unwrap();
    let mut old: Value = serde_json::from_slice(&raw.value).unwrap();
    old.as_object_mut().unwrap().remove("read_only_port");
    etcd_client
        .put(key.as_bytes(), old.to_string().as_bytes())
        .await
        .unwrap();
    assert!(c.store.release_port(given, "ro1").await.unwrap());
    assert_eq!(
        c.store
            .instance("ro1")
            .await
            .unwrap()
            .unwrap()
            .value
            .read_only_port,
        None
    );
    let _worker = c.spawn_worker();
    let ro_port = wait_for(
        "the worker gives the old record a read-only port",
        Duration::from_secs(30),
        || async { c.store.instance("ro1").await.ok()??.value.read_only_port },
        diag,
    )
    .await;
    assert_eq!(
        c.store.port_owner(ro_port).await.unwrap().as_deref(),
        Some("ro1")
    );
    let inst = c.store.instance("ro1").await.unwrap().unwrap().value;

    // --- A binding: its credentials carry the read-only port and the multi-host URIs. ---
    let (s, b) = c
        .call(
            Method::PUT,
            "/v2/service_instances/ro1/service_bindings/app-1",
            Some(json!({"service_id": c.service, "plan_id": c.plan})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let creds = &b["credentials"];
    let uri = creds["uri"].as_str().unwrap().to_string();
    let ro_uri = creds["read_only_uri"].as_str().unwrap().to_string();
    let multihost = creds["uri_multihost"].as_str().unwrap().to_string();
    assert_eq!(creds["read_only_port"], json!(ro_port), "{creds}");
    assert!(
        ro_uri.ends_with(&format!("@127.0.0.1:{ro_port}/app")),
        "{ro_uri}"
    );
    let node_ports: Vec<u16> = inst.nodes.iter().map(|n| n.pg_port).collect();
    let hosts: Vec<String> = node_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    assert!(
        multihost.contains(&format!(
            "@{}/app?target_session_attrs=read-write",
            hosts.join(",")
        )),
        "{multihost}"
    );
    let jdbc = creds["jdbc_url_multihost"].as_str().unwrap();
    assert!(
        jdbc.starts_with(&format!(
            "jdbc:postgresql://{}/app?targetServerType=primary&user=",
            hosts.join(",")
        )),
        "{jdbc}"
    );

    // --- Writes through the primary port; reads through the read-only port on the replica
    // see each commit at once (remote_apply); writes there are refused. ---
    let db = wait_for(
        "writes through the router",
        Duration::from_secs(20),
        || primary_as(uri.clone()),
        diag,
    )
    .await;
    db.batch_execute("create table t (id int primary key)")
        .await
        .unwrap();
    let (ro, _) = wait_for(
        "the read-only port on a replica",
        Duration::from_secs(30),
        || async { session(&ro_uri).await.filter(|(_, replica)| *replica) },
        diag,
    )
    .await;
    let primary_port = port_of(&db).await;
    assert_ne!(port_of(&ro).await, primary_port);
    // The broker's setting reached both nodes, and the replica is the synchronous standby
    // (a failover before Patroni counts it as one would find no candidate to promote).
    for session in [&db, &ro] {
        let sc: String = session
            .query_one("show synchronous_commit", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(sc, "remote_apply");
    }
    let replica = inst
        .nodes
        .iter()
        .find(|n| n.pg_port != primary_port)
        .expect("a replica");
    wait_for_sync(&c.store, &inst, &replica.name, &diag).await;
    for k in 1..=20 {
        db.execute("insert into t values ($1)", &[&k])
            .await
            .unwrap();
        assert_eq!(
            count(&ro).await,
            i64::from(k),
            "a commit not yet seen on the replica"
        );
    }
    let refused = ro
        .batch_execute("insert into t values (1000)")
        .await
        .expect_err("a write on the read-only port");
    assert_eq!(
        refused.code(),
        Some(&SqlState::READ_ONLY_SQL_TRANSACTION),
        "{refused}"
    );

    // --- The multi-host URI: the nodes directly (pg_hba lets the binding's role in from
    // anywhere with its password), the primary found by the client. ---
    let (mh, in_recovery) = session(&multihost).await.expect("multi-host connects");
    assert!(!in_recovery);
    assert_eq!(port_of(&mh).await, primary_port);

    // --- The leader's cell dies. ---
    let leader_node = inst
        .nodes
        .iter()
        .find(|n| n.pg_port == primary_port)
        .expect("the leader is a placed node");
    let survivor = inst
        .nodes
        .iter()
        .find(|n| n.pg_port != primary_port)
        .expect("a replica")
        .pg_port;
    let victim = cells
        .iter()
        .find(|c| c.name == leader_node.cell)
        .expect("the leader's cell");
    let haproxy_log = root.join("haproxy").join("haproxy.log");
    let downs_before = downs(&haproxy_log, "pgro_ro1", &replica.name);
    let killed_at = Instant::now();
    victim.kill();
    drop(db);
    // The primary port: writes on the promoted replica, with every row.
    let db = wait_for(
        "writes through the primary port after the leader's cell died",
        Duration::from_secs(60),
        || async {
            let c = primary_as(with_timeout(&uri)).await?;
            (port_of(&c).await == survivor).then_some(())?;
            c.batch_execute("insert into t values (21)").await.ok()?;
            Some(c)
        },
        diag,
    )
    .await;
    eprintln!("failover: {:.1} s", killed_at.elapsed().as_secs_f64());
    assert_eq!(count(&db).await, 21);
    // The multi-host URI: the session on the old leader is gone; a new one finds the new
    // primary (the dead node refuses, the client tries the next host).
    assert!(mh.query_one("select 1", &[]).await.is_err());
    let (mh, _) = wait_for(
        "the multi-host URI reaches the new primary",
        Duration::from_secs(30),
        || async { session(&multihost).await.filter(|(_, replica)| !replica) },
        diag,
    )
    .await;
    assert_eq!(port_of(&mh).await, survivor);
    mh.batch_execute("insert into t values (22)").await.unwrap();
    // The read-only port: no replica left, so the primary serves it (fallback). Only once
    // HAProxy marked the promoted node down as a replica (until then the read-only block may
    // still send sessions to it as one: that would not be the fallback).
    let survivor_name = &replica.name;
    wait_for(
        "HAProxy marks the promoted node down on the read-only port",
        Duration::from_secs(30),
        || async { (downs(&haproxy_log, "pgro_ro1", survivor_name) > downs_before).then_some(()) },
        diag,
    )
    .await;
    let (fallback, _) = wait_for(
        "the read-only port falls back to the primary",
        Duration::from_secs(30),
        || async { session(&ro_uri).await.filter(|(_, replica)| !replica) },
        diag,
    )
    .await;
    assert_eq!(port_of(&fallback).await, survivor);
    assert_eq!(count(&fallback).await, 22);

    // --- The old node rejoins as a replica: the read-only port reaches it again. ---
    victim.restart();
    victim.wait_ready().await;
    let (ro, _) = wait_for(
        "the read-only port on the rejoined replica",
        Duration::from_secs(120),
        || async { session(&ro_uri).await.filter(|(_, replica)| *replica) },
        diag,
    )
    .await;
    assert_eq!(port_of(&ro).await, primary_port);
    // Synchronous again (the rejoined node is the synchronous standby once it streams):
    // each commit is on it when it returns.
    wait_for_sync(&c.store, &inst, &leader_node.name, &diag).await;
    for k in 23..=30 {
        db.execute("insert into t values ($1)", &[&k])
            .await
            .unwrap();
        assert_eq!(count(&ro).await, i64::from(k));
    }
    eprintln!("done in {:.1} s", t0.elapsed().as_secs_f64());
}
