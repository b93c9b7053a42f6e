//! The broker's state backup (`[state_backup]`, design §4.1) against a real etcd and a
//! `file://` second store: snapshots follow the OSB API's changes, `walarchive-broker
//! state-backup verify` (the real binary) passes on them and refuses, with one line, a wrong
//! key, a truncated object and a record of an unknown shape; no secret is in clear in any
//! object; pruning keeps `keep`. The API runs in-process (tower's `oneshot`) and no worker
//! runs: recording a provision is a change of state, no Patroni is needed.
use testkit::broker as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use base64::Engine as _;
use serde_json::{json, Value};
use tower::ServiceExt;

use common::audit;
use common::etcd::etcd;
use walarchive_broker::secrets::Keyring;
use walarchive_broker::statebackup::{Snapshot, SnapshotKey, StateBackup};
use walarchive_broker::{
    app, AppState, BrokerConfig, EtcdClient, InstanceSecrets, NoBinder, Store,
};

const SERVICE: &str = "svc-sb";
const PLAN: &str = "plan-sb";
const PASSWORD: &str = "pl@tform:secret";
const KEEP: usize = 3;

fn config_text(dir: &Path, prefix: &str, key_file: &Path, url: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
[secrets]
key_file = "{key}"
[credentials]
username = "platform"
password_file = "{pw}"
[service]
id = "{SERVICE}"
name = "pg"
description = "HA PostgreSQL"
[[service.plans]]
id = "{PLAN}"
name = "single"
description = "one node"
[repository]
base = "file://{dir}/archives"
[etcd]
{etcd}prefix = "{prefix}"
[router]
host = "router.test"
port_min = 41000
port_max = 41019
[nodes]
etcd_ca_file = "{ca}"
[worker]
poll_interval = "1s"
[state_backup]
url = "{url}"
keep = {KEEP}
min_interval = "1s"
"#,
        key = key_file.display(),
        pw = dir.join("password").display(),
        dir = dir.display(),
        etcd = etcd().config_lines(),
        ca = common::etcd::pki().ca_file().display(),
    )
}

/// `walarchive-broker state-backup ARGS --config FILE`: (exit code, stdout, stderr).
fn cli(args: &[&str], config: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_walarchive-broker"))
        .arg("state-backup")
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run walarchive-broker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The one line `verify` refuses with: exit 1, exactly one line on stderr, holding `what`.
fn refused(config: &Path, what: &str) -> String {
    let (code, out, err) = cli(&["verify"], config);
    assert_eq!(code, 1, "verify must fail: {out}{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].starts_with("walarchive-broker: error: ") && lines[0].contains(what),
        "{what:?} in {err}"
    );
    lines[0].to_string()
}

async fn provision(app: &axum::Router, id: &str) {
    let body = json!({
        "service_id": SERVICE, "plan_id": PLAN,
        "organization_guid": "org-1", "space_guid": "space-1",
        "context": { "platform": "cloudfoundry", "organization_guid": "org-1",
                     "space_guid": "space-1", "instance_name": id },
    });
    let req = Request::builder()
        .method(Method::PUT)
        .uri(format!(
            "/v2/service_instances/{id}?accepts_incomplete=true"
        ))
        .header(
            header::AUTHORIZATION,
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("platform:{PASSWORD}"))
            ),
        )
        .header("X-Broker-API-Version", "2.17")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED, "provision {id}");
}

/// Waits (at most `within`) until the newest snapshot holds `key`; how long it took.
async fn snapshot_holding(backup: &StateBackup, key: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if let Some(newest) = backup.list().await.unwrap().pop() {
            let snap = backup.load(&newest.name).await.unwrap();
            if snap.keys.iter().any(|k| k.key == key) {
                return t0.elapsed();
            }
        }
        assert!(
            t0.elapsed() < within,
            "no snapshot holds {key} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn snapshot_files(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root.join("snapshots"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_follow_the_api_verify_refuses_damage_and_pruning_keeps_keep() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("password"), format!("{PASSWORD}\n")).unwrap();
    let key_file = d.join("secrets.key");
    std::fs::write(&key_file, Keyring::generate_key()).unwrap();
    let store_root = d.join("state-store");
    let url = format!("file://{}", store_root.display());
    let prefix = format!("/broker{}", etcd().fresh_prefix());
    let config_path = d.join("broker.toml");
    std::fs::write(&config_path, config_text(d, &prefix, &key_file, &url)).unwrap();

    let config = BrokerConfig::load(&config_path).expect("test configuration");
    let client = EtcdClient::from_config(&config.etcd).unwrap();
    let store = Store::new(client, prefix.clone(), config.keyring());
    let state = AppState::new(config, store.clone(), std::sync::Arc::new(NoBinder));
    let api = app(state.clone());
    let backup = StateBackup::open(&state.config, store.clone())
        .unwrap()
        .expect("[state_backup] is configured");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(
        StateBackup::open(&state.config, store.clone())
            .unwrap()
            .unwrap()
            .run(
                state.state_changed.clone(),
                Duration::from_secs(1),
                async move {
                    let _ = stop_rx.changed().await;
                },
            ),
    );

    // A provision through the API is in a snapshot within the poll interval (the API wakes
    // the task; min_interval is 1 s).
    provision(&api, "first").await;
    let took = snapshot_holding(
        &backup,
        &format!("{prefix}/instances/first"),
        Duration::from_secs(5),
    )
    .await;
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // Secrets, as the worker stores them (sealed per record), are in the next snapshot.
    let secrets = InstanceSecrets::generate();
    store.put_instance_secrets("first", &secrets).await.unwrap();
    snapshot_holding(
        &backup,
        &format!("{prefix}/secrets/first"),
        Duration::from_secs(5),
    )
    .await;

    // `verify` passes, and says how far behind etcd the snapshot is.
    let (code, out, err) = cli(&["verify", "--json"], &config_path);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["records"]["instances"], 1, "{v}");
    assert_eq!(v["records"]["secrets"], 1, "{v}");
    assert_eq!(v["records"]["operations"], 1, "{v}");
    assert!(
        v["records"].get("claims").is_none(),
        "claims are left out: {v}"
    );
    assert_eq!(v["changed_keys"], 0, "{v}");
    assert!(v["age_seconds"].as_i64().unwrap() < 30, "{v}");
    let (code, out, _) = cli(&["verify"], &config_path);
    assert_eq!(code, 0);
    assert!(
        out.contains("records decode") && out.lines().count() == 1,
        "{out}"
    );

    // More changes: every one is snapshotted, and pruning keeps `keep`.
    for id in ["second", "third", "fourth"] {
        provision(&api, id).await;
        snapshot_holding(
            &backup,
            &format!("{prefix}/instances/{id}"),
            Duration::from_secs(5),
        )
        .await;
    }
    let (code, out, _) = cli(&["list", "--json"], &config_path);
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), KEEP, "{listed}");
    assert_eq!(snapshot_files(&store_root).len(), KEEP);
    let _ = stop_tx.send(true);
    task.await.unwrap();

    // No secret in clear in any object: neither the instance's passwords nor the platform's.
    let mut known: audit::Secrets = vec![
        (
            "superuser password".into(),
            secrets.superuser_password.expose().into(),
        ),
        (
            "replication password".into(),
            secrets.replication_password.expose().into(),
        ),
        ("platform password".into(), PASSWORD.into()),
    ];
    if let Some(p) = &secrets.rewind_password {
        known.push(("rewind password".into(), p.expose().into()));
    }
    let files = snapshot_files(&store_root);
    let found = audit::in_files(&files, &known);
    assert!(found.is_empty(), "{found:?}");
    // Nor in the opened snapshot (the records' own sealing holds there too).
    let newest = backup.list().await.unwrap().pop().unwrap();
    let snap = backup.load(&newest.name).await.unwrap();
    let plain = serde_json::to_string(&snap).unwrap();
    let decoded: Vec<String> = snap
        .keys
        .iter()
        .map(|k| {
            String::from_utf8_lossy(
                &base64::engine::general_purpose::STANDARD
                    .decode(&k.value_b64)
                    .unwrap(),
            )
            .into_owned()
        })
        .collect();
    let found = audit::findings(
        std::iter::once(("the opened snapshot".to_string(), plain.as_str()))
            .chain(decoded.iter().map(|t| ("a record".to_string(), t.as_str()))),
        &known,
        |_, _| false,
    );
    assert!(found.is_empty(), "{found:?}");

    // A wrong key: another broker's key does not open the snapshot.
    let other_key = d.join("other.key");
    std::fs::write(&other_key, Keyring::generate_key()).unwrap();
    let other = d.join("other.toml");
    std::fs::write(&other, config_text(d, &prefix, &other_key, &url)).unwrap();
    refused(&other, "which is neither secrets.key_file");

    // A truncated object.
    let newest_file = snapshot_files(&store_root).pop().unwrap();
    let original = std::fs::read(&newest_file).unwrap();
    std::fs::write(&newest_file, &original[..original.len() / 2]).unwrap();
    let line = refused(&config_path, ".sealed: ");
    assert!(
        line.contains("does not open") || line.contains("not a sealed value"),
        "{line}"
    );
    std::fs::write(&newest_file, &original).unwrap();
    assert_eq!(cli(&["verify"], &config_path).0, 0, "restored");

    // A record of an unknown shape, sealed properly: refused, naming its key.
    let mut bad: Snapshot = snap.clone();
    bad.revision += 1000;
    bad.keys.push(SnapshotKey {
        key: format!("{prefix}/instances/odd"),
        value_b64: base64::engine::general_purpose::STANDARD.encode(br#"{"shape":"unknown"}"#),
    });
    bad.keys.sort_by(|a, b| a.key.cmp(&b.key));
    backup.write(&bad).await.unwrap();
    let line = refused(
        &config_path,
        &format!("corrupt record at {prefix}/instances/odd"),
    );
    assert!(!line.contains("unknown\""), "values are not echoed: {line}");
}
