//! Instance ids chosen to break paths, end to end: `.`, `..`, `wal`, `a/b`, a literal
//! `%2e%2e`, Unicode, 255 bytes, and `x.2` beside the second incarnation of `x`, each
//! provisioned through the OSB API as a real single-node cluster on real cells, backed up on
//! schedule with retention, and deprovisioned, by two brokers: one archiving into a `file://`
//! repository, one into S3 (s3s-fs).
//!
//! What must hold: every instance archives into a prefix of its own directly below the base
//! (nothing at the base itself, above it, or inside another instance's prefix), so that one
//! instance's retention never deletes another's objects: after every instance ran its
//! retention, every instance's newest backup still verifies with its WAL. Before names were
//! mapped, `.` archived into the base itself and its retention deleted the WAL of `wal`, and
//! `..` archived above the base (on S3, at the bucket's root).
//!
//! The scenario also carries the secrets audit (it runs the most kinds of process: Patroni,
//! PostgreSQL, HAProxy, cell agents, walarchive against `file://` and S3, retention): no known
//! secret in the command line of any process seen during it, in the broker's log (a tracing
//! subscriber writes it to a file here), in the cells', Patroni's, PostgreSQL's or HAProxy's
//! logs, or in the `Debug` output of the configuration and the records.
use testkit::broker as common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::audit;
use common::broker::BrokerToml;
use common::cells::{chown_postgres, test_root, wait_for, walarchive_copy, Cell};
use common::etcd::etcd;
use common::osb::Api;
use common::s3::{files_under, s3};
use walarchive_broker::state::{InstanceRecord, InstanceState};

/// (the id as the platform writes it in the URL, the id).
const FILE_IDS: &[(&str, &str)] = &[
    ("%2E", "."),
    ("%2E%2E", ".."),
    ("%252e%252e", "%2e%2e"),
    ("wal", "wal"),
    ("a", "a"),
    ("a%2Fb", "a/b"),
    ("%E6%95%B0%E6%8D%AE-%C3%BC", "数据-ü"),
    ("x.2", "x.2"),
    ("x", "x"),
];

const S3_IDS: &[(&str, &str)] = &[
    ("%2E", "."),
    ("%2E%2E", ".."),
    ("wal", "wal"),
    ("a%2Fb", "a/b"),
    ("%E6%95%B0%E6%8D%AE-%C3%BC", "数据-ü"),
    ("x.2", "x.2"),
];

/// A 255-byte id that escapes too long to be a name: it is hashed.
fn long_id() -> String {
    format!("L.{}", "x".repeat(253))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_archive_apart_in_file_and_s3_repositories() {
    tokio::time::timeout(Duration::from_secs(900), scenario())
        .await
        .expect("the scenario finishes within 15 minutes");
}

/// One broker of the test: its API, and what it provisioned (id as in the URL, id).
struct Broker {
    api: Api,
    ids: Vec<(String, String)>,
}

async fn scenario() {
    let etcd = etcd();
    let root = test_root("ids");
    // The broker's log, as `walarchive-broker serve` would write it (more verbose).
    let broker_log = std::fs::File::create(root.join("broker.log")).unwrap();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(broker_log))
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "info,walarchive_broker=debug",
        ))
        .try_init();
    let processes = audit::ProcessWatch::start();
    // A canary, so that the audit shows it finds what it looks for: a short-lived process
    // with it on its command line, and a log holding it.
    let canary = format!(
        "canary-{}",
        walarchive_broker::secrets::Secret::generate().expose()
    );
    std::fs::write(root.join("canary.log"), format!("x {canary} y\n")).unwrap();
    let st = std::process::Command::new("sh")
        .args(["-c", "sleep 1", &canary])
        .status()
        .unwrap();
    assert!(st.success());
    let bin = walarchive_copy(&root);
    // The file base sits one level below a directory of its own, so that anything written
    // beside or above the base shows.
    let store = root.join("store");
    std::fs::create_dir(&store).unwrap();
    chown_postgres(&store);
    let file_base = format!("file://{}/base", store.display());
    let s3 = s3();
    let bucket = s3.fresh_bucket();
    let s3_base = format!("s3://{bucket}/inst");
    let s3_config = root.join("walarchive-s3.toml");
    s3.walarchive_config(&s3_config);

    // Cells of their own for each broker: node names are derived from instance ids, which
    // the two brokers share.
    let cells = [
        Cell::start(&root, "a"),
        Cell::start(&root, "b"),
        Cell::start(&root, "c"),
        Cell::start(&root, "d"),
    ];
    for c in &cells {
        c.wait_ready().await;
    }
    let diag = || {
        cells
            .iter()
            .map(|c| format!("--- cell {} ---\n{}\n", c.name, c.log_tail(15)))
            .collect::<String>()
    };

    // Two ports per instance (its own and its read-only one), 16 instances per broker.
    let port_min = common::cells::router_ports(64);
    let mut brokers = Vec::new();
    let mut workers = Vec::new();
    for (k, (base, ids, config)) in [
        (&file_base, FILE_IDS, None),
        (&s3_base, S3_IDS, Some(s3_config.clone())),
    ]
    .into_iter()
    .enumerate()
    {
        let mut t = BrokerToml::new(&root.join(format!("broker-{k}")), base, &bin);
        t.cells = vec![(&cells[2 * k], "za"), (&cells[2 * k + 1], "zb")];
        t.node_count = 1;
        t.walarchive_config = config;
        t.port_min = Some(port_min + 32 * k as u16);
        t.router_ports = 32;
        t.backups = ("20s", 1);
        t.worker = ("1s", "8m");
        t.outlive_router = false;
        // Failover speed does not matter here; etcd requests that time out under the load of
        // sixteen bootstraps do (Patroni waits retry_timeout / 3 for each).
        t.timing = (30, 2, 10);
        let prefix = format!("/broker{}", etcd.fresh_prefix());
        let api = Api::new(&t.render(&prefix), &t.service, &t.plan);
        workers.push(api.spawn_worker());
        let mut ids: Vec<(String, String)> = ids
            .iter()
            .map(|(u, i)| (u.to_string(), i.to_string()))
            .collect();
        if k == 0 {
            ids.push((long_id(), long_id()));
        }
        brokers.push(Broker { api, ids });
    }

    // --- Every id provisioned, four at a time (two cores). ---
    let all: Vec<(&Broker, &String)> = brokers
        .iter()
        .flat_map(|b| b.ids.iter().map(move |(url, _)| (b, url)))
        .collect();
    for wave in all.chunks(4) {
        let mut ops = Vec::new();
        for (b, url) in wave {
            ops.push((b, url, b.api.provision(url, 1).await));
        }
        for (b, url, op) in &ops {
            b.api
                .wait_succeeded(url, op, Duration::from_secs(300), &diag)
                .await;
        }
    }
    eprintln!("{} instances provisioned", all.len());
    // A binding, for the audit: its password must not show anywhere either.
    let binding_uri = brokers[1].api.bind("wal", "app-1").await;

    // The second incarnation of `x` archives into `x.2`, beside the instance `x.2`.
    let f = &brokers[0];
    let op = f.api.deprovision("x").await;
    let (_, s, b) = f
        .api
        .wait_op("x", &op, Duration::from_secs(120), &diag)
        .await;
    assert_eq!(s.as_u16(), 410, "{b}");
    let op = f.api.provision("x", 1).await;
    f.api
        .wait_succeeded("x", &op, Duration::from_secs(240), &diag)
        .await;
    let x2 = f.api.store.instance("x").await.unwrap().unwrap().value;
    assert_eq!(x2.incarnation, 2);
    assert_eq!(x2.repository, format!("{file_base}/x.2"));
    let x_dot_2 = f.api.store.instance("x.2").await.unwrap().unwrap().value;
    assert_eq!(x_dot_2.repository, format!("{file_base}/_x_2E2"));

    // --- A scheduled backup, and retention (retain 1), on every instance. ---
    // Incarnation 1 of `x` (deprovisioned: no schedule, no retention) is a neighbour whose
    // every object must stay as it is.
    let x1_files = || {
        files_under(&store.join("base").join("x"))
            .into_iter()
            .collect::<BTreeSet<_>>()
    };
    let x1_before = x1_files();
    assert!(!x1_before.is_empty());
    let mut first: BTreeMap<(usize, String), _> = BTreeMap::new();
    // Each live repository's first backup ended before this time.
    let mut first_by_repo = BTreeMap::new();
    for (k, b) in brokers.iter().enumerate() {
        for (_, id) in &b.ids {
            let i = b.api.store.instance(id).await.unwrap().unwrap().value;
            let t0 = i.last_backup_at.expect("first backup");
            first_by_repo.insert(i.repository.clone(), t0.0);
            first.insert((k, id.clone()), t0);
        }
    }
    wait_for(
        "a scheduled backup and retention on every instance",
        Duration::from_secs(300),
        || async {
            for ((k, id), t0) in &first {
                let i = brokers[*k].api.store.instance(id).await.ok()??.value;
                if i.last_backup_at? <= *t0 {
                    return None;
                }
            }
            Some(())
        },
        diag,
    )
    .await;

    // The schedule goes on every 20 s: stop it (and let the cells' backups end) before
    // looking, so that no retention deletes a backup being verified.
    for w in workers.drain(..) {
        w.abort();
        let _ = w.await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    secrets_audit(
        &root,
        &brokers,
        &cells,
        &binding_uri,
        processes.finish(),
        &bucket,
        &canary,
    )
    .await;

    // --- Nothing outside each instance's prefix; every archive whole after the others'
    // retention. ---
    let records = |k: usize| {
        let b = &brokers[k];
        async move {
            let mut out = Vec::new();
            for (_, id) in &b.ids {
                out.push(b.api.store.instance(id).await.unwrap().unwrap().value);
            }
            out
        }
    };
    let file_records = records(0).await;
    let s3_records = records(1).await;
    assert_eq!(
        std::fs::read_dir(&store)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
        ["base"],
        "only the base in its parent"
    );
    check_layout(
        &file_base,
        &file_records,
        &files_under(&store.join("base")),
        &[
            "__2E",
            "__2E_2E",
            "__252e_252e",
            "wal",
            "a",
            "_a_2Fb",
            "x.2",
            "_x_2E2",
        ],
    );
    let bucket_dir = s3.root_dir().join(&bucket);
    let in_bucket = files_under(&bucket_dir);
    assert!(
        in_bucket.iter().all(|k| k.starts_with("inst/")),
        "keys outside the base: {:?}",
        in_bucket
            .iter()
            .filter(|k| !k.starts_with("inst/"))
            .collect::<Vec<_>>()
    );
    let under_base: Vec<String> = in_bucket
        .iter()
        .map(|k| k.strip_prefix("inst/").unwrap().to_string())
        .collect();
    check_layout(
        &s3_base,
        &s3_records,
        &under_base,
        &["__2E", "__2E_2E", "wal", "_a_2Fb", "_x_2E2"],
    );
    let mut repos: Vec<(String, Option<&std::path::Path>)> = file_records
        .iter()
        .map(|i| (i.repository.clone(), None))
        .collect();
    repos.push((format!("{file_base}/x"), None));
    repos.extend(
        s3_records
            .iter()
            .map(|i| (i.repository.clone(), Some(s3_config.as_path()))),
    );
    for (repo, config) in &repos {
        let mut args: Vec<&str> = Vec::new();
        if let Some(c) = config {
            args.extend(["--config", c.to_str().unwrap()]);
        }
        args.extend(["--repo", repo]);
        for check in [&["verify", "backup", "LATEST"][..], &["wal-verify"][..]] {
            let mut a = args.clone();
            a.extend(check);
            if let Err(e) = common::cells::walarchive(&bin, &a) {
                panic!("{repo}: walarchive {check:?} failed:\n{e}");
            }
        }
    }
    eprintln!("{} archives verified", repos.len());
    // Retention did run: each live instance took at least two backups (the first and a
    // scheduled one), and retention after the scheduled one deleted the first. A later
    // scheduled backup may have ended just before the workers were stopped, its retention
    // cut off by the stop: it may remain beside the one retention kept, the first may not.
    // The deprovisioned neighbour lost nothing.
    for (repo, config) in &repos {
        let mut args: Vec<&str> = Vec::new();
        if let Some(c) = config {
            args.extend(["--config", c.to_str().unwrap()]);
        }
        args.extend(["--repo", repo, "backup-list", "--json"]);
        let listed: serde_json::Value =
            serde_json::from_str(&common::cells::walarchive(&bin, &args).unwrap()).unwrap();
        let n = listed.as_array().unwrap().len();
        if *repo == format!("{file_base}/x") {
            assert!(n >= 1, "{repo}: {listed}");
        } else {
            let t0 = first_by_repo[repo];
            let started_before_t0 = listed
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| {
                    let start = b["start_time"].as_str().unwrap();
                    chrono::DateTime::parse_from_rfc3339(start).unwrap() < t0
                })
                .count();
            assert!(
                (1..=2).contains(&n) && started_before_t0 == 0,
                "{repo}: retention (retain 1) left {listed}"
            );
        }
    }
    assert_eq!(
        x1_files(),
        x1_before,
        "another instance's retention touched incarnation 1 of x"
    );

    // --- Deprovision (by new workers): `a` first, and `a/b`'s cluster keys are still
    // there. ---
    workers.extend(brokers.iter().map(|b| b.api.spawn_worker()));
    let namespace = |k: usize| brokers[k].api.state.config.patroni_namespace();
    let etcd_api = &brokers[0].api;
    let keys = |prefix: String| async move { etcd_keys(etcd_api, &prefix).await };
    let op = f.api.deprovision("a").await;
    let (_, s, _) = f
        .api
        .wait_op("a", &op, Duration::from_secs(120), &diag)
        .await;
    assert_eq!(s.as_u16(), 410);
    assert!(keys(format!("{}a/", namespace(0))).await.is_empty());
    assert!(
        !keys(format!("{}_a_2Fb/", namespace(0))).await.is_empty(),
        "a's deprovision removed a/b's cluster keys"
    );
    for (k, b) in brokers.iter().enumerate() {
        for (url, id) in &b.ids {
            if k == 0 && id == "a" {
                continue;
            }
            let op = b.api.deprovision(url).await;
            let (_, s, body) = b
                .api
                .wait_op(url, &op, Duration::from_secs(120), &diag)
                .await;
            assert_eq!(s.as_u16(), 410, "{id}: {body}");
            let i = b.api.store.instance(id).await.unwrap().unwrap().value;
            assert_eq!(i.state, InstanceState::Deleted);
            assert!(
                keys(format!("{}{}/", namespace(k), i.scope()))
                    .await
                    .is_empty(),
                "{id}: Patroni keys left"
            );
        }
    }
    for c in &cells {
        assert!(
            c.client().nodes().await.unwrap().is_empty(),
            "nodes left on {}",
            c.name
        );
    }
    // The archives stay.
    let kept = files_under(&store.join("base"));
    assert!(kept.iter().any(|f| f.starts_with("__2E_2E/")), "{kept:?}");
    for w in workers {
        w.abort();
        let _ = w.await;
    }
}

/// No known secret in any command line seen during the scenario (`command_lines`), in the
/// logs under `root`, or in the `Debug` output of the brokers' configurations and records.
async fn secrets_audit(
    root: &std::path::Path,
    brokers: &[Broker],
    cells: &[Cell],
    binding_uri: &str,
    command_lines: BTreeSet<String>,
    bucket: &str,
    canary: &str,
) {
    let e = etcd();
    let mut secrets: audit::Secrets = vec![
        ("the canary".into(), canary.into()),
        (
            "the platform's password".into(),
            common::osb::PASSWORD.into(),
        ),
        ("the S3 secret key".into(), s3().secret_key.clone()),
        (
            "etcd's root password".into(),
            e.root_password.expose().into(),
        ),
        (
            "the broker's etcd password".into(),
            e.broker_password.expose().into(),
        ),
        (
            "Patroni's etcd password".into(),
            e.patroni_password.expose().into(),
        ),
        (
            "the binding's password".into(),
            audit::uri_password(binding_uri),
        ),
    ];
    for c in cells {
        secrets.push((format!("cell {}'s token", c.name), c.token.expose().into()));
    }
    for k in 0..brokers.len() {
        let key = std::fs::read_to_string(root.join(format!("broker-{k}/secrets.key"))).unwrap();
        secrets.push((format!("broker {k}'s sealing key"), key.trim_end().into()));
    }
    let mut instances = 0;
    for (k, b) in brokers.iter().enumerate() {
        for (_, id) in &b.ids {
            let s = b.api.store.instance_secrets(id).await.unwrap().unwrap();
            secrets.push((
                format!("{k}/{id:?}'s superuser password"),
                s.superuser_password.expose().into(),
            ));
            secrets.push((
                format!("{k}/{id:?}'s replication password"),
                s.replication_password.expose().into(),
            ));
            secrets.push((
                format!("{k}/{id:?}'s rewind password"),
                s.rewind_password
                    .expect("a rewind password")
                    .expose()
                    .into(),
            ));
            instances += 1;
        }
    }
    let restapi = audit::restapi_passwords(root);
    assert!(restapi.len() >= instances, "{} node.json", restapi.len());
    secrets.extend(restapi);

    // Command lines: the harness's own S3 server takes its key as an argument.
    let seen = |needle: &str| command_lines.iter().filter(|c| c.contains(needle)).count();
    let root_s = root.display().to_string();
    for (what, needle) in [
        ("cell agents", "walarchive-broker cell"),
        ("Patroni", "patroni"),
        ("PostgreSQL", "postgres -D"),
        ("HAProxy", "haproxy"),
        ("walarchive", &format!("{root_s}/bin/walarchive")),
        ("the S3 archive", &format!("s3://{bucket}/")),
    ] {
        assert!(
            seen(needle) > 0,
            "no command line of {what} seen ({needle})"
        );
    }
    eprintln!("{} distinct command lines seen", command_lines.len());
    let mut found = audit::findings(
        command_lines
            .iter()
            .map(|c| (format!("the command line {c:?}"), c.as_str())),
        &secrets,
        |text, what| what == "the S3 secret key" && text.contains("s3s-fs"),
    );

    // Logs: the broker's, the cells', Patroni's (with PostgreSQL's), HAProxy's.
    let logs = audit::log_files(root);
    for expected in ["broker.log", "cell-a.log", "patroni.log", "haproxy.log"] {
        assert!(
            logs.iter().any(|p| p.ends_with(expected)),
            "no {expected} among {logs:?}"
        );
    }
    let broker_log = std::fs::read_to_string(root.join("broker.log")).unwrap();
    assert!(
        broker_log.contains("retention applied"),
        "the broker's log holds no retention"
    );
    found.extend(audit::in_files(&logs, &secrets));

    // Debug output of the configurations and records.
    for (k, b) in brokers.iter().enumerate() {
        let mut debug = vec![(
            format!("broker {k}'s configuration"),
            format!("{:?}", b.api.state.config),
        )];
        for (_, id) in &b.ids {
            let r = b.api.store.instance(id).await.unwrap().unwrap().value;
            debug.push((format!("{k}/{id:?}'s record"), format!("{r:?}")));
            let s = b.api.store.instance_secrets(id).await.unwrap().unwrap();
            debug.push((format!("{k}/{id:?}'s secrets record"), format!("{s:?}")));
        }
        if let Some(binding) = b.api.store.binding("wal", "app-1").await.unwrap() {
            debug.push((format!("broker {k}'s binding"), format!("{binding:?}")));
        }
        found.extend(audit::findings(
            debug.iter().map(|(n, t)| (n.clone(), t.as_str())),
            &secrets,
            |_, _| false,
        ));
    }
    let (canaries, found): (Vec<String>, Vec<String>) = found
        .into_iter()
        .partition(|f| f.starts_with("the canary "));
    assert_eq!(
        canaries.len(),
        2,
        "the canary not found as planted: {canaries:?}"
    );
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
    eprintln!(
        "secrets audit: {} secrets, {} logs, clean",
        secrets.len(),
        logs.len()
    );
}

/// Asserts that the files `under_base` (relative to the base) all belong to the recorded
/// repositories, each of which is one safe name directly below `base` holding some, and that
/// `expected` are among those names.
fn check_layout(base: &str, records: &[InstanceRecord], under_base: &[String], expected: &[&str]) {
    let mut names: BTreeSet<String> = records
        .iter()
        .map(|i| {
            let name = i
                .repository
                .strip_prefix(&format!("{base}/"))
                .unwrap_or_else(|| panic!("{} is not below {base}", i.repository))
                .to_string();
            assert!(
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
                    && !name.starts_with('.'),
                "{name:?}"
            );
            name
        })
        .collect();
    // Incarnation 1 of `x`, deprovisioned and re-provisioned.
    if base.starts_with("file:") {
        names.insert("x".into());
    }
    for e in expected {
        assert!(names.contains(*e), "{e} not among {names:?}");
    }
    let mut seen = BTreeSet::new();
    for f in under_base {
        let (top, _) = f
            .split_once('/')
            .unwrap_or_else(|| panic!("{f:?} directly in the base {base}"));
        assert!(
            names.contains(top),
            "{f:?} in no instance's repository ({names:?})"
        );
        seen.insert(top.to_string());
    }
    assert_eq!(
        seen, names,
        "an instance archived nothing in its own repository"
    );
}

async fn etcd_keys(api: &Api, prefix: &str) -> Vec<String> {
    api.store
        .etcd()
        .get_prefix(prefix.as_bytes())
        .await
        .unwrap()
        .iter()
        .map(|kv| kv.key_str())
        .collect()
}
