//! The real `walarchive-broker serve` process, SIGKILLed in the middle of a provision.
//!
//! Why a process and not a task: an aborted in-process worker (tests/provision.rs) leaves
//! the runtime, its HTTP client pools and HAProxy's owner alive. Here nothing of the first
//! broker survives but what it wrote to etcd and the HAProxy it left running, which is the
//! case an operator meets after a crash or an OOM kill. The second broker must resume the
//! operation from etcd (after the first one's claim lapses), adopt that HAProxy rather than
//! start another, and then serve bindings whose URI reaches the new cluster's leader. The
//! same again for a clone of that instance (design §2.5), a broker killed while the clone's
//! node restores the base backup and the next one while it replays WAL: the third finishes
//! it on that same node.
use testkit::broker as common;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::cells::{connect, free_port, tail, wait_for, Cell};
use common::rig::Rig;
use common::serve::{osb_call, serve_answering, spawn_serve, trusting_tests_ca};

const SERVICE: &str = "svc-serve";
const PLAN: &str = "plan-single";

const BROKER: &str = env!("CARGO_BIN_EXE_walarchive-broker");

/// The test-only fault hook every broker here runs with (handed to the nodes): each part and
/// each segment read waits 1.5 s.
const FAULTS: [(&str, &str); 1] = [(
    "WALARCHIVE_FAULTS",
    "op=get key=/part- fault=slow:1500; op=get key=/wal/0000 fault=slow:1500",
)];

/// The broker's API over real HTTP.
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        osb_call(&self.http, &self.base, method, path, body).await
    }

    /// Binds `binding` to `instance` (201) and connects with the binding's URI, waiting up to
    /// 20 s for the route to answer: the connection and the binding's credentials.
    async fn bind_and_connect(
        &self,
        instance: &str,
        binding: &str,
        diag: impl Fn() -> String,
    ) -> (tokio_postgres::Client, Value) {
        let (s, b) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v2/service_instances/{instance}/service_bindings/{binding}"),
                Some(json!({"service_id": SERVICE, "plan_id": PLAN})),
            )
            .await
            .unwrap();
        assert_eq!(s, 201, "{b}");
        let uri = b["credentials"]["uri"].as_str().expect("uri").to_string();
        let client = wait_for(
            &format!("a connection to {instance} with the binding's URI"),
            Duration::from_secs(20),
            || async { connect(&uri).await.ok() },
            diag,
        )
        .await;
        (client, b["credentials"].clone())
    }

    async fn ready(&self) -> Option<()> {
        let answer = self.call(reqwest::Method::GET, "/v2/catalog", None).await;
        matches!(answer, Ok((200, _))).then_some(())
    }

    async fn last_operation(&self, id: &str, op: &str) -> Option<Value> {
        let (s, b) = self
            .call(
                reqwest::Method::GET,
                &format!("/v2/service_instances/{id}/last_operation?operation={op}"),
                None,
            )
            .await
            .ok()?;
        (s == 200).then_some(b)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_during_a_provision_is_resumed_by_the_next_one() {
    tokio::time::timeout(Duration::from_secs(300), scenario())
        .await
        .expect("the scenario finishes within 5 minutes");
}

async fn scenario() {
    let t0 = Instant::now();
    let rig = Rig::start("serve", &["a"]).await;
    let (root, bin, base, cell) = (&rig.root, &rig.bin, &rig.base, &rig.cells[0]);

    let listen = free_port();
    let mut t = rig.toml();
    t.service = SERVICE.into();
    t.plan = PLAN.into();
    t.node_count = 1;
    t.listen = Some(listen);
    t.router_ports = 8;
    t.backups = ("1h", 2);
    t.worker = ("1s", "4m");
    let prefix = rig.prefix();
    let config = root.join("broker.toml");
    // The clone below restores slowly enough to be caught in its base backup's restore and
    // in its WAL replay: each part and each segment read waits 1.5 s (the test-only fault
    // hook, handed to the nodes by the broker).
    // Archived every second, so that the clone holds the row written just before it.
    let text = t
        .render(&prefix)
        .replace(
            "[repository]\n",
            "[repository]\nenv = [\"WALARCHIVE_FAULTS\"]\n",
        )
        .replace("archive_timeout = \"60s\"", "archive_timeout = \"1s\"");
    assert!(text.contains("env = [\"WALARCHIVE_FAULTS\"]") && text.contains("\"1s\""));
    std::fs::write(&config, text).unwrap();
    let log = root.join("broker.log");
    let diag = || {
        format!(
            "--- broker ---\n{}\n--- cell ---\n{}\n--- haproxy ---\n{}",
            tail(&log, 40),
            cell.log_tail(20),
            tail(&root.join("haproxy").join("haproxy.log"), 10)
        )
    };
    // Over TLS, trusting the tests' CA only, as a platform configured with it would.
    let api = Api {
        http: trusting_tests_ca()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        base: format!("https://127.0.0.1:{listen}"),
    };

    let mut broker = serve_answering(
        BROKER,
        &config,
        &log,
        &FAULTS,
        "the broker answers",
        || api.ready(),
        diag,
    )
    .await;
    let (s, b) = api
        .call(
            reqwest::Method::PUT,
            "/v2/service_instances/db1?accepts_incomplete=true",
            Some(json!({
                "service_id": SERVICE, "plan_id": PLAN,
                "organization_guid": "org", "space_guid": "space",
                "context": {"platform": "test", "instance_name": "db1"},
            })),
        )
        .await
        .unwrap();
    assert_eq!(s, 202, "{b}");
    let op = b["operation"].as_str().unwrap().to_string();

    // Kill it once the node exists but before the operation is done: Patroni's bootstrap
    // (initdb, first start), the route and the first backup are still ahead.
    let described = wait_for(
        "the node is being created",
        Duration::from_secs(60),
        || async {
            let b = api.last_operation("db1", &op).await?;
            assert_eq!(
                b["state"], "in progress",
                "the provision ended before the kill: {b}"
            );
            let nodes = cell.client().nodes().await.ok()?;
            nodes
                .iter()
                .any(|n| n.instance_id == "db1")
                .then(|| b["description"].as_str().unwrap_or_default().to_string())
        },
        diag,
    )
    .await;
    broker.kill().unwrap();
    broker.wait().unwrap();
    eprintln!(
        "broker SIGKILLed at {:.1} s during \"{described}\"",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        api.call(reqwest::Method::GET, "/v2/catalog", None)
            .await
            .is_err(),
        "the first broker is gone"
    );

    // The next broker resumes the operation from etcd.
    let mut broker = serve_answering(
        BROKER,
        &config,
        &log,
        &FAULTS,
        "the second broker answers",
        || api.ready(),
        diag,
    )
    .await;
    let done = wait_for(
        "the provision to end",
        Duration::from_secs(180),
        || async {
            let b = api.last_operation("db1", &op).await?;
            (b["state"] != "in progress").then_some(b)
        },
        diag,
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}\n{}", diag());
    let resumed = std::fs::read_to_string(&log).unwrap();
    let second = resumed
        .rsplit("serving the Open Service Broker API")
        .next()
        .unwrap();
    assert!(
        !second.contains("panicked"),
        "the second broker panicked:\n{}",
        diag()
    );

    // One HAProxy: the one the first broker started, adopted by the second.
    let pid = std::fs::read_to_string(root.join("haproxy").join("haproxy.pid"))
        .expect("haproxy.pid")
        .trim()
        .to_string();
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "HAProxy {pid} runs"
    );
    let haproxies: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| {
            let program = c.split(' ').next().unwrap_or_default();
            program.ends_with("haproxy") && c.contains(&*root.to_string_lossy())
        })
        .collect();
    // master-worker: one master and its current worker (a previous worker lingers only
    // while it still serves a connection: none here).
    assert!(haproxies.len() <= 2, "HAProxy processes: {haproxies:#?}");

    // Bind through the second broker and write through the route it returned.
    let (db, credentials) = api.bind_and_connect("db1", "b1", diag).await;
    db.batch_execute("create table t (id int); insert into t values (1)")
        .await
        .expect("write with the binding's role");

    // The binding's role is unprivileged: no programs, no server files.
    for sql in [
        "copy (select 1) to program 'id'",
        "select pg_read_file('/etc/passwd')",
    ] {
        let e = db.batch_execute(sql).await.expect_err(sql);
        let m = e
            .as_db_error()
            .map_or(e.to_string(), |d| d.message().to_string());
        assert!(
            m.contains("permission denied") || m.contains("must be superuser"),
            "{sql}: {m}"
        );
    }
    // The instance's superuser and replication passwords do not open the router's port.
    let c = walarchive_broker::BrokerConfig::load(&config).unwrap();
    let store = walarchive_broker::Store::new(
        walarchive_broker::EtcdClient::from_config(&c.etcd).unwrap(),
        &prefix,
        c.keyring(),
    );
    let secrets = store.instance_secrets("db1").await.unwrap().unwrap();
    let port = credentials["port"].as_u64().unwrap() as u16;
    for (user, pw) in [
        ("postgres", secrets.superuser_password.expose()),
        ("replicator", secrets.replication_password.expose()),
    ] {
        let e = connect(&common::cells::conninfo(user, port, pw))
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} got in through the router"));
        let m = e
            .as_db_error()
            .map_or(e.to_string(), |d| d.message().to_string());
        assert!(m.contains("pg_hba.conf rejects connection"), "{user}: {m}");
    }
    // And etcd holds none of the passwords in clear.
    let binding_pw = credentials["password"].as_str().unwrap();
    for kv in store.etcd().get_prefix(prefix.as_bytes()).await.unwrap() {
        let v = String::from_utf8_lossy(&kv.value);
        for pw in [
            secrets.superuser_password.expose(),
            secrets.replication_password.expose(),
            binding_pw,
        ] {
            assert!(
                !v.contains(pw),
                "{} holds a password in clear",
                kv.key_str()
            );
        }
    }

    // The first base backup of the instance is in its repository.
    let out = common::cells::walarchive(
        bin,
        &["--repo", &format!("{base}/db1"), "backup-list", "--json"],
    )
    .unwrap();
    assert!(out.contains("base_"), "no first backup: {out}");

    // --- A clone of db1 (design §2.5): the broker SIGKILLed while its first node restores
    // the base backup (slowed down by the fault hook, passed to the nodes through
    // repository.env); the next broker finishes it with the same node. ---
    tokio::time::sleep(Duration::from_secs(3)).await; // the row above archived
    let (s, b) = api
        .call(
            reqwest::Method::PUT,
            "/v2/service_instances/db1-clone?accepts_incomplete=true",
            Some(json!({
                "service_id": SERVICE, "plan_id": PLAN,
                "organization_guid": "org", "space_guid": "space",
                "context": {"platform": "test", "instance_name": "db1-clone"},
                "parameters": {"clone-from": "db1"},
            })),
        )
        .await
        .unwrap();
    assert_eq!(s, 202, "{b}");
    let op = b["operation"].as_str().unwrap().to_string();
    let described = wait_for(
        "the clone restores its base backup",
        Duration::from_secs(60),
        || async {
            let b = api.last_operation("db1-clone", &op).await?;
            assert_eq!(
                b["state"], "in progress",
                "the clone ended before the kill: {b}"
            );
            let d = b["description"].as_str().unwrap_or_default().to_string();
            d.starts_with("restoring base backup").then_some(d)
        },
        diag,
    )
    .await;
    let node = clone_nodes(cell).await;
    assert_eq!(node.len(), 1, "{node:?}");
    broker.kill().unwrap();
    broker.wait().unwrap();
    eprintln!(
        "broker SIGKILLed at {:.1} s during \"{described}\"",
        t0.elapsed().as_secs_f64()
    );
    // The next one, killed in turn while the node replays the source's WAL.
    let mut broker = spawn_serve(BROKER, &config, &log, &FAULTS);
    let described = wait_for(
        "the clone replays WAL",
        Duration::from_secs(60),
        || async {
            let b = api.last_operation("db1-clone", &op).await?;
            assert_eq!(
                b["state"], "in progress",
                "the clone ended before the kill: {b}"
            );
            let d = b["description"].as_str().unwrap_or_default().to_string();
            d.starts_with("replaying WAL").then_some(d)
        },
        diag,
    )
    .await;
    broker.kill().unwrap();
    broker.wait().unwrap();
    eprintln!(
        "broker SIGKILLed at {:.1} s during \"{described}\"",
        t0.elapsed().as_secs_f64()
    );
    let mut broker = spawn_serve(BROKER, &config, &log, &FAULTS);
    let done = wait_for(
        "the clone to end",
        Duration::from_secs(180),
        || async {
            let b = api.last_operation("db1-clone", &op).await?;
            (b["state"] != "in progress").then_some(b)
        },
        diag,
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}\n{}", diag());
    // One set of nodes: the node the first broker put, never re-created.
    let after = clone_nodes(cell).await;
    assert_eq!(after, node, "the clone's nodes");
    let (clone, _) = api.bind_and_connect("db1-clone", "b2", diag).await;
    let n: i64 = clone
        .query_one("select count(*) from t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the clone's rows");

    broker.kill().unwrap();
    broker.wait().unwrap();
    eprintln!("done at {:.1} s", t0.elapsed().as_secs_f64());
}

/// The clone's nodes on `cell`: (name, Patroni's PID), so that a node deleted and put again
/// shows.
async fn clone_nodes(cell: &Cell) -> Vec<(String, Option<u32>)> {
    let mut out: Vec<_> = cell
        .client()
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.instance_id == "db1-clone")
        .map(|n| (n.name, n.pid))
        .collect();
    out.sort();
    out
}
