//! `GET /metrics` of the real `walarchive-broker serve` over a real two-node cluster (etcd,
//! two cells, Patroni, PostgreSQL, HAProxy): the figures checked against what the cluster
//! itself says (psql on the leader, `walarchive backup-list --json`), the archive lag growing
//! while archiving really fails (the repository unwritable for the postgres user) and back
//! near zero once it works again, authentication and the absence of secrets, and the samples
//! file read back after the broker is killed and started again.
//!
//! One cluster for all of it: a provision is the expensive part.
use testkit::broker as common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::cells::{connect, free_port, local_sql, tail, wait_for, walarchive, Cell};
use common::osb::{PASSWORD, USER};
use common::rig::Rig;
use common::serve::{osb_call, serve_answering, spawn_serve, trusting_tests_ca};
use walarchive_broker::stats::{Retention, SampleStore};

const SERVICE: &str = "svc-metrics";
const PLAN: &str = "plan-metrics";
const ID: &str = "metrics-1";

const BROKER: &str = env!("CARGO_BIN_EXE_walarchive-broker");

struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    async fn osb(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        osb_call(&self.client, &self.base, method, path, body)
            .await
            .ok()
    }

    /// `GET /metrics` with `auth` (user, password): the status and the text.
    async fn metrics_as(&self, auth: Option<(&str, &str)>) -> Option<(u16, String)> {
        let mut req = self.client.get(format!("{}/metrics", self.base));
        if let Some((u, p)) = auth {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    }

    async fn metrics(&self) -> Option<Metrics> {
        match self.metrics_as(Some((USER, PASSWORD))).await? {
            (200, text) => Some(Metrics::parse(&text)),
            _ => None,
        }
    }
}

/// A scrape parsed by a Prometheus text parser.
struct Metrics {
    text: String,
    samples: Vec<prometheus_parse::Sample>,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("a Prometheus text");
        Metrics {
            text: text.to_string(),
            samples: scrape.samples,
        }
    }

    /// The value of `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .and_then(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            })
    }

    fn instance(&self, name: &str) -> Option<f64> {
        self.get(name, &[("instance_id", ID)])
    }
}

/// The node (cell, name, PostgreSQL port) that leads, and the others.
async fn roles(cells: &[&Cell]) -> Option<((usize, String, u16), Vec<(usize, String, u16)>)> {
    let mut leader = None;
    let mut replicas = Vec::new();
    for (k, c) in cells.iter().enumerate() {
        for n in c.client().nodes().await.ok()? {
            let it = (k, n.name.clone(), n.ports.pg_port);
            if n.is_leader() {
                leader = Some(it);
            } else {
                replicas.push(it);
            }
        }
    }
    Some((leader?, replicas))
}

/// A Patroni switchover from `leader` (on `cell`) to `candidate` through the leader's REST API,
/// retried until Patroni accepts it; returns once the candidate leads.
async fn switchover(cell: &Cell, leader: &str, candidate: &str, diag: &dyn Fn() -> String) {
    let node: Value = serde_json::from_slice(
        &std::fs::read(cell.data_root.join(leader).join("node.json")).unwrap(),
    )
    .unwrap();
    let password = node["restapi_password"].as_str().unwrap().to_string();
    let port = node["ports"]["api_port"].as_u64().unwrap();
    let api = format!("http://127.0.0.1:{port}/switchover");
    let http = reqwest::Client::new();
    // Patroni refuses a switchover to a replica it does not deem healthy yet: retried.
    wait_for(
        "Patroni accepts the switchover",
        Duration::from_secs(30),
        || async {
            let r = http
                .post(&api)
                .basic_auth(walarchive_broker::patroni::RESTAPI_USER, Some(&password))
                .header("Content-Type", "application/json")
                .body(json!({"leader": leader, "candidate": candidate}).to_string())
                .send()
                .await
                .ok()?;
            if r.status().is_success() {
                return Some(());
            }
            eprintln!(
                "switchover: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            None
        },
        diag,
    )
    .await;
}

/// Every directory under `dir` (and itself) writable by its owner or not.
fn writable(dir: &Path, yes: bool) {
    let mode = if yes { 0o750 } else { 0o550 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            writable(&e.path(), yes);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_cluster() {
    tokio::time::timeout(Duration::from_secs(480), scenario())
        .await
        .expect("the scenario finishes within 8 minutes");
}

async fn scenario() {
    let t0 = Instant::now();
    let rig = Rig::start("metrics", &["a", "b"]).await;
    let (root, bin, base) = (&rig.root, &rig.bin, &rig.base);
    let (a, b) = (&rig.cells[0], &rig.cells[1]);
    let cells = [a, b];

    let listen = free_port();
    let mut t = rig.toml();
    t.service = SERVICE.into();
    t.plan = PLAN.into();
    t.node_count = 2;
    t.listen = Some(listen);
    t.router_ports = 4;
    t.backups = ("1h", 2);
    t.worker = ("1s", "4m");
    let prefix = rig.prefix();
    let stats_dir = root.join("stats");
    let config = root.join("broker.toml");
    let text = format!(
        "{}\n[stats]\nsample_interval = \"1s\"\ncell_timeout = \"3s\"\nrepository_interval = \"2s\"\ndir = \"{}\"\n",
        t.render(&prefix),
        stats_dir.display()
    )
    .replace("archive_timeout = \"60s\"", "archive_timeout = \"5s\"");
    std::fs::write(&config, text).unwrap();
    let log = root.join("broker.log");
    let diag = || {
        format!(
            "--- broker ---\n{}\n--- cell a ---\n{}\n--- cell b ---\n{}",
            tail(&log, 40),
            a.log_tail(15),
            b.log_tail(15),
        )
    };
    let http = Http {
        client: trusting_tests_ca()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        base: format!("https://127.0.0.1:{listen}"),
    };

    let mut broker = serve_answering(
        BROKER,
        &config,
        &log,
        &[],
        "the broker answers",
        || async {
            matches!(
                http.osb(reqwest::Method::GET, "/v2/catalog", None).await,
                Some((200, _))
            )
            .then_some(())
        },
        diag,
    )
    .await;

    // --- No page without the operator's credentials.
    for auth in [None, Some((USER, "wrong")), Some(("someone", PASSWORD))] {
        let (status, body) = http.metrics_as(auth).await.unwrap();
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert!(!body.contains("walarchive_"), "{body}");
    }

    let (s, body) = http
        .osb(
            reqwest::Method::PUT,
            &format!("/v2/service_instances/{ID}?accepts_incomplete=true"),
            Some(json!({
                "service_id": SERVICE, "plan_id": PLAN,
                "organization_guid": "org", "space_guid": "space",
                "context": {"platform": "test", "instance_name": "orders"},
            })),
        )
        .await
        .unwrap();
    assert_eq!(s, 202, "{body}");
    let op = body["operation"].as_str().unwrap().to_string();
    wait_for(
        "the provision",
        Duration::from_secs(240),
        || async {
            let (s, b) = http
                .osb(
                    reqwest::Method::GET,
                    &format!("/v2/service_instances/{ID}/last_operation?operation={op}"),
                    None,
                )
                .await?;
            assert_ne!(b["state"], "failed", "{b}");
            (s == 200 && b["state"] == "succeeded").then_some(())
        },
        diag,
    )
    .await;
    eprintln!("provisioned at {:.1} s", t0.elapsed().as_secs_f64());
    let (s, binding) = http
        .osb(
            reqwest::Method::PUT,
            &format!("/v2/service_instances/{ID}/service_bindings/b1"),
            Some(json!({"service_id": SERVICE, "plan_id": PLAN})),
        )
        .await
        .unwrap();
    assert_eq!(s, 201, "{binding}");
    let uri = binding["credentials"]["uri"].as_str().unwrap().to_string();
    let binding_password = binding["credentials"]["password"]
        .as_str()
        .unwrap()
        .to_string();
    let app = wait_for(
        "a session through the router",
        Duration::from_secs(20),
        || async { connect(&uri).await.ok() },
        diag,
    )
    .await;
    app.batch_execute("create table t (id int primary key, v text); insert into t select g, repeat('x', 200) from generate_series(1, 20000) g")
        .await
        .unwrap();

    let ((lk, leader, lport), replicas) = wait_for(
        "a leader and a replica",
        Duration::from_secs(30),
        || async { roles(&cells).await.filter(|(_, r)| r.len() == 1) },
        diag,
    )
    .await;
    let replica = replicas[0].1.clone();
    let psql = |sql: &str| local_sql(cells[lk], lport, sql).unwrap();

    // --- The instance's figures against the cluster's own.
    let m = wait_for(
        "the instance's nodes and the replica's lag in /metrics",
        Duration::from_secs(60),
        || async {
            let m = http.metrics().await?;
            (m.instance("walarchive_instance_nodes_up") == Some(2.0)
                && m.get(
                    "walarchive_instance_replication_lag_bytes",
                    &[("instance_id", ID), ("node", &replica)],
                )
                .is_some())
            .then_some(m)
        },
        diag,
    )
    .await;
    assert_eq!(
        m.get(
            "walarchive_instance_replication_lag_bytes",
            &[("instance_id", ID), ("node", &leader)]
        ),
        None,
        "the leader has no replica lag"
    );
    assert_eq!(m.instance("walarchive_instance_nodes"), Some(2.0));
    assert_eq!(m.instance("walarchive_instance_has_leader"), Some(1.0));
    assert_eq!(
        m.get(
            "walarchive_instance_nodes_up",
            &[("instance_id", ID), ("name", "orders"), ("plan", "ha")]
        ),
        Some(2.0),
        "the instance's name and plan label its series"
    );
    assert_eq!(
        m.instance("walarchive_instance_archive_timeout_seconds"),
        Some(5.0)
    );
    assert_eq!(
        m.instance("walarchive_instance_max_connections"),
        Some(psql("show max_connections").parse::<f64>().unwrap())
    );
    for cell in ["a", "b"] {
        assert_eq!(
            m.get("walarchive_cell_up", &[("cell", cell)]),
            Some(1.0),
            "{}",
            m.text
        );
        assert_eq!(
            m.get("walarchive_cell_nodes", &[("cell", cell)]),
            Some(1.0),
            "{}",
            m.text
        );
    }
    // The size of `app` (the table above: some MB) within 3 % of what the leader says.
    wait_for(
        "the database size within 3 % of pg_database_size",
        Duration::from_secs(30),
        || async {
            let m = http.metrics().await?;
            let got = m.instance("walarchive_instance_database_bytes")?;
            let want: f64 = psql("select pg_database_size('app')").parse().unwrap();
            eprintln!("database size: /metrics {got}, psql {want}");
            ((got - want).abs() <= want * 0.03 && want > 4e6).then_some(())
        },
        diag,
    )
    .await;
    // Connections: three more sessions of the binding, counted as the leader counts its
    // client backends (psql's own session left out, as the cell leaves out its own).
    let mut extra = Vec::new();
    for _ in 0..3 {
        extra.push(connect(&uri).await.unwrap());
    }
    wait_for(
        "the connections as pg_stat_activity counts them",
        Duration::from_secs(30),
        || async {
            let m = http.metrics().await?;
            let got = m.instance("walarchive_instance_connections")?;
            let want: f64 = psql(
                "select count(*) - 1 from pg_stat_activity where backend_type = 'client backend'",
            )
            .parse()
            .unwrap();
            eprintln!("connections: /metrics {got}, psql {want}");
            (got == want && got >= 4.0).then_some(())
        },
        diag,
    )
    .await;
    drop(extra);
    // The last backup: the first base backup of the provision, as walarchive lists it.
    let repo = format!("{base}/{}", walarchive_broker::names::path_name(ID));
    let listed: Value = serde_json::from_str(
        &walarchive(bin, &["--repo", &repo, "backup-list", "--json"]).unwrap(),
    )
    .unwrap();
    let newest = listed
        .as_array()
        .and_then(|l| l.iter().rev().find(|b| b["complete"] == true))
        .cloned()
        .expect("a complete backup");
    let want = newest["original_bytes"].as_f64().unwrap();
    let m = wait_for(
        "the last backup in /metrics",
        Duration::from_secs(30),
        || async {
            let m = http.metrics().await?;
            m.instance("walarchive_instance_last_backup_bytes")
                .map(|_| m)
        },
        diag,
    )
    .await;
    assert_eq!(
        m.instance("walarchive_instance_last_backup_bytes"),
        Some(want),
        "{newest}"
    );
    let age = m
        .instance("walarchive_instance_last_backup_age_seconds")
        .unwrap();
    assert!((0.0..600.0).contains(&age), "{age}");
    // The broker's own counters: the provision, and the OSB answers.
    assert_eq!(
        m.get(
            "walarchive_broker_operations_total",
            &[("kind", "provision"), ("result", "succeeded")]
        ),
        Some(1.0),
        "{}",
        m.text
    );
    assert!(
        m.get("walarchive_broker_api_requests_total", &[("status", "202")])
            .is_some(),
        "{}",
        m.text
    );
    assert!(
        m.text
            .contains("walarchive_broker_operation_duration_seconds_bucket"),
        "{}",
        m.text
    );
    // No secret in the text: the broker's password, the binding's, the cells' tokens.
    for secret in [
        PASSWORD,
        binding_password.as_str(),
        a.token.expose(),
        b.token.expose(),
    ] {
        assert!(!m.text.contains(secret), "a secret in /metrics");
    }
    eprintln!("figures checked at {:.1} s", t0.elapsed().as_secs_f64());

    // --- The archive lag while archiving fails, and after.
    let switch = || {
        psql("select pg_switch_wal()");
        let _ = psql("checkpoint");
    };
    wait_for(
        "an archive lag near zero",
        Duration::from_secs(60),
        || async {
            let m = http.metrics().await?;
            (m.instance("walarchive_instance_archive_lag_seconds")? < 2.0).then_some(())
        },
        diag,
    )
    .await;
    let repo_dir = root.join("repo");
    writable(&repo_dir, false);
    app.batch_execute("insert into t select g, 'y' from generate_series(20001, 30000) g")
        .await
        .unwrap();
    switch();
    let first = wait_for(
        "an archive lag above 3 s while archiving fails",
        Duration::from_secs(60),
        || async {
            let m = http.metrics().await?;
            let lag = m.instance("walarchive_instance_archive_lag_seconds")?;
            (lag > 3.0).then_some(lag)
        },
        diag,
    )
    .await;
    wait_for(
        "the archive lag growing",
        Duration::from_secs(30),
        || async {
            let m = http.metrics().await?;
            (m.instance("walarchive_instance_archive_lag_seconds")? >= first + 2.0).then_some(())
        },
        diag,
    )
    .await;
    let failed = http
        .metrics()
        .await
        .unwrap()
        .instance("walarchive_instance_archive_failed_count")
        .unwrap();
    assert!(failed >= 1.0, "{failed}");
    writable(&repo_dir, true);
    app.batch_execute("insert into t values (30001, 'z')")
        .await
        .unwrap();
    switch();
    wait_for(
        "the archive lag back near zero",
        Duration::from_secs(90),
        || async {
            let m = http.metrics().await?;
            let lag = m.instance("walarchive_instance_archive_lag_seconds")?;
            eprintln!("archive lag {lag}");
            (lag < 2.0).then_some(())
        },
        diag,
    )
    .await;
    eprintln!("archive lag checked at {:.1} s", t0.elapsed().as_secs_f64());

    // --- A switchover: the roles change in /metrics and Patroni's history counts it.
    assert_eq!(
        http.metrics()
            .await
            .unwrap()
            .instance("walarchive_instance_leader_changes_total"),
        Some(0.0)
    );
    switchover(cells[lk], &leader, &replica, &diag).await;
    wait_for(
        "the switchover in /metrics",
        Duration::from_secs(60),
        || async {
            let m = http.metrics().await?;
            (m.instance("walarchive_instance_leader_changes_total")? == 1.0
                && m.instance("walarchive_instance_has_leader")? == 1.0
                && m.get(
                    "walarchive_instance_replication_lag_bytes",
                    &[("instance_id", ID), ("node", &leader)],
                )
                .is_some()
                && m.get(
                    "walarchive_instance_replication_lag_bytes",
                    &[("instance_id", ID), ("node", &replica)],
                )
                .is_none())
            .then_some(())
        },
        diag,
    )
    .await;
    eprintln!("switchover checked at {:.1} s", t0.elapsed().as_secs_f64());

    // --- A cell that hangs (SIGSTOP): its node is unknown, the other is still sampled every
    // round (each round waits at most cell_timeout for it), and all is back once it answers.
    let hung = cells[lk];
    let signal = |sig: &str| {
        let pid = hung.pid().expect("the cell runs").to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    };
    signal("-STOP");
    let hung_name = hung.name.clone();
    let m = wait_for(
        "the hung cell's node unknown",
        Duration::from_secs(30),
        || async {
            let m = http.metrics().await?;
            (m.instance("walarchive_instance_nodes_up")? == 1.0
                && m.get("walarchive_cell_up", &[("cell", &hung_name)])? == 0.0)
                .then_some(m)
        },
        diag,
    )
    .await;
    assert_eq!(m.instance("walarchive_instance_has_leader"), Some(1.0));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let age = http
            .metrics()
            .await
            .unwrap()
            .instance("walarchive_instance_sample_age_seconds")
            .unwrap();
        assert!(
            age < 8.0,
            "sampling goes on beside a hung cell (last sample {age} s ago)"
        );
    }
    signal("-CONT");
    wait_for(
        "the cell answering again",
        Duration::from_secs(30),
        || async {
            let m = http.metrics().await?;
            (m.instance("walarchive_instance_nodes_up")? == 2.0
                && m.get("walarchive_cell_up", &[("cell", &hung_name)])? == 1.0)
                .then_some(())
        },
        diag,
    )
    .await;
    eprintln!("hung cell checked at {:.1} s", t0.elapsed().as_secs_f64());

    // --- The samples survive the broker: killed, started again, both lives' samples read.
    let killed_at = chrono::Utc::now();
    broker.kill().unwrap();
    broker.wait().unwrap();
    let retention = Retention {
        full: Duration::from_secs(48 * 3600),
        coarse_interval: Duration::from_secs(600),
        coarse: Duration::from_secs(30 * 86400),
    };
    let file = stats_dir.join(walarchive_broker::stats::FILE_NAME);
    let since = killed_at - chrono::Duration::hours(1);
    let before = {
        let store = SampleStore::open(&file, retention).unwrap();
        store.series(ID, since, chrono::Utc::now()).unwrap()
    };
    assert!(before.len() >= 5, "{}", before.len());
    assert!(
        before
            .iter()
            .any(|s| s.archive_lag_seconds.is_some_and(|l| l > 3.0)),
        "the failing archive's lag is in the series"
    );
    let mut broker = spawn_serve(BROKER, &config, &log, &[]);
    wait_for(
        "samples of the restarted broker",
        Duration::from_secs(60),
        || async {
            let m = http.metrics().await?;
            (m.instance("walarchive_instance_nodes_up")? == 2.0).then_some(())
        },
        diag,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.kill().unwrap();
    broker.wait().unwrap();
    let after = SampleStore::open(&file, retention)
        .unwrap()
        .series(ID, since, chrono::Utc::now())
        .unwrap();
    assert!(
        after.len() > before.len(),
        "{} then {}",
        before.len(),
        after.len()
    );
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "the first broker's samples are kept"
    );
    assert!(after.last().unwrap().at.0 > killed_at);
    let by_second: BTreeMap<i64, usize> = after.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.at.0.timestamp()).or_default() += 1;
        m
    });
    assert!(
        by_second.len() >= after.len() / 2,
        "samples about one a second"
    );
    eprintln!("done in {:.1} s", t0.elapsed().as_secs_f64());
}

/// The example alert rules are valid Prometheus rules, and each fires on the series it is
/// meant for and not on healthy ones (`promtool`, from Debian's prometheus package, installed
/// by `scripts/setup`).
#[test]
fn the_example_alert_rules_pass_promtool() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&docs)
            .output()
            .expect("run promtool (scripts/setup installs it)");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
