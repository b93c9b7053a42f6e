//! `walarchive-broker disaster-recovery`, part 1 (design §4.2 steps 1, 2, 4): the broker's
//! records come back from a state snapshot into an empty etcd. Real etcd, real cell agents
//! (with no node: no Patroni here), a `file://` state store, the OSB API in-process for the
//! records, and the real binary for the recovery: records are back (byte for byte but the
//! instances and operations, which are marked for recovery), `--dry-run` writes nothing, and a
//! non-empty etcd, a second run, a cell that does not answer and a snapshot sealed with another
//! key are refused with status 2 and nothing written.
use testkit::broker as common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use common::broker::BrokerToml;
use common::cells::Cell;
use common::etcd::etcd;
use common::osb::Api;
use walarchive_broker::recover::{PROVISION_AGAIN, RECOVERING};
use walarchive_broker::secrets::{Keyring, Secret};
use walarchive_broker::state::{
    BindingRecord, BindingState, Credentials, InstanceRecord, InstanceState, NodePlacement,
    OperationKind, OperationRecord, OperationState, Outcome, RestoreKind, Timestamp,
};
use walarchive_broker::statebackup::StateBackup;
use walarchive_broker::InstanceSecrets;

/// `walarchive-broker disaster-recovery --config FILE ARGS`: (exit code, stdout, stderr).
fn recovery(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_walarchive-broker"))
        .arg("disaster-recovery")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run walarchive-broker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Refused: status 2, nothing on stdout, one line on stderr holding `what`.
fn refused(config: &Path, args: &[&str], what: &str) {
    let (code, out, err) = recovery(config, args);
    assert_eq!(code, 2, "refused: {out}{err}");
    assert_eq!(out, "", "nothing printed but the refusal");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].starts_with("walarchive-broker: error: ") && lines[0].contains(what),
        "{what:?} in {err}"
    );
}

/// Every key under `prefix` and its value.
async fn keys(api: &Api, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    api.store
        .etcd()
        .get_prefix(format!("{prefix}/").as_bytes())
        .await
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key_str(), kv.value))
        .collect()
}

fn decode<T: serde::de::DeserializeOwned>(v: &[u8]) -> T {
    serde_json::from_slice(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_come_back_into_an_empty_etcd_and_anything_else_is_refused() {
    let root = common::cells::test_root("recover");
    let cells = [Cell::start(&root, "a"), Cell::start(&root, "b")];
    for c in &cells {
        c.wait_ready().await;
    }
    let mut toml = BrokerToml::new(
        &root.join("broker"),
        &format!("file://{}/archives", root.display()),
        Path::new("/usr/bin/true"),
    );
    toml.cells = vec![(&cells[0], "z1"), (&cells[1], "z2")];
    let prefix = format!("/broker{}", etcd().fresh_prefix());
    let state_url = format!("file://{}/state-store", root.display());
    let text = format!(
        "{}\n[state_backup]\nurl = \"{state_url}\"\n",
        toml.render(&prefix)
    );
    let config = root.join("broker.toml");
    std::fs::write(&config, &text).unwrap();
    let api = Api::new(&text, &toml.service, &toml.plan);
    let store = api.store.clone();

    // Records as a broker leaves them: "live" ready on two nodes with a binding and
    // secrets, "young" still provisioning, "gone" deprovisioned (a tombstone).
    let mut ops = BTreeMap::new();
    for id in ["live", "young", "gone"] {
        ops.insert(id, api.provision(id, 2).await);
    }
    for id in ["live", "gone"] {
        store
            .transition(id, &ops[id], |i, _| {
                for (n, c) in [("a", "z1"), ("b", "z2")] {
                    i.nodes.push(NodePlacement {
                        name: format!("{id}-{n}"),
                        cell: n.into(),
                        zone: c.into(),
                        pg_port: 20001,
                        api_port: 20002,
                    });
                }
                i.last_backup_at = Some(Timestamp::now());
                Ok(())
            })
            .await
            .unwrap();
        store
            .finish_operation(
                id,
                &ops[id],
                Outcome {
                    succeeded: true,
                    description: "ready".into(),
                    instance_usable: None,
                },
            )
            .await
            .unwrap();
    }
    let secrets = InstanceSecrets::generate();
    store.put_instance_secrets("live", &secrets).await.unwrap();
    let now = Timestamp::now();
    let binding = BindingRecord {
        instance_id: "live".into(),
        binding_id: "b-1".into(),
        service_id: toml.service.clone(),
        plan_id: toml.plan.clone(),
        request: serde_json::json!({}),
        state: BindingState::Created,
        credentials: Some(Credentials {
            uri: "postgresql://u:p@127.0.0.1:41000/app".into(),
            jdbc_url: "jdbc:postgresql://127.0.0.1:41000/app?user=u&password=p".into(),
            hostname: "127.0.0.1".into(),
            port: 41000,
            name: "app".into(),
            username: "u".into(),
            password: Secret::generate().expose().to_string(),
            read_only_uri: None,
            read_only_port: None,
            uri_multihost: None,
            jdbc_url_multihost: None,
        }),
        created_at: now,
        updated_at: now,
    };
    store.put_binding(&binding, 0).await.unwrap().unwrap();
    let gone_op = api.deprovision("gone").await;
    // As the deprovision pass leaves it: its nodes removed.
    store
        .transition("gone", &gone_op, |i, _| {
            i.nodes.clear();
            Ok(())
        })
        .await
        .unwrap();
    store
        .finish_operation(
            "gone",
            &gone_op,
            Outcome {
                succeeded: true,
                description: "Deleted; the archive is kept.".into(),
                instance_usable: None,
            },
        )
        .await
        .unwrap();

    // The snapshot.
    let backup = StateBackup::open(&api.state.config, store.clone())
        .unwrap()
        .unwrap();
    let snap = backup.read_state().await.unwrap();
    backup.write(&snap).await.unwrap();
    let before = keys(&api, &prefix).await;
    assert!(
        before.keys().any(|k| k.contains("/catalog/"))
            && before.keys().any(|k| k.contains("/ports/")),
        "{:?}",
        before.keys()
    );

    // etcd still holds the state: refused, nothing written (not even with --dry-run).
    for args in [&[][..], &["--dry-run"][..]] {
        refused(
            &config,
            args,
            &format!(
                "etcd already holds broker state under {prefix} ({} keys); disaster recovery restores into an empty etcd.",
                before.len()
            ),
        );
    }
    assert_eq!(keys(&api, &prefix).await, before);

    // The disaster.
    store
        .etcd()
        .delete_prefix(format!("{prefix}/").as_bytes())
        .await
        .unwrap();

    // A cell that does not answer: refused.
    cells[1].kill();
    refused(&config, &[], "cell b did not answer");
    cells[1].restart();
    cells[1].wait_ready().await;
    assert!(keys(&api, &prefix).await.is_empty());

    // A snapshot sealed with another key: refused with the state backup's line.
    let other_key = root.join("other.key");
    std::fs::write(&other_key, Keyring::generate_key()).unwrap();
    let key_line = format!(
        "key_file = \"{}\"",
        root.join("broker/secrets.key").display()
    );
    assert!(text.contains(&key_line));
    let other = root.join("other.toml");
    std::fs::write(
        &other,
        text.replace(
            &key_line,
            &format!("key_file = \"{}\"", other_key.display()),
        ),
    )
    .unwrap();
    refused(&other, &[], "which is neither secrets.key_file");
    refused(&config, &["--snapshot", "1"], "no snapshot of revision 1");
    assert!(keys(&api, &prefix).await.is_empty());

    // --dry-run: the plan, and nothing written.
    let (code, out, err) = recovery(&config, &["--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    let line = |id: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{id} {id} ")))
            .unwrap_or_else(|| panic!("{id} in {out}"))
            .to_string()
    };
    assert!(
        line("live").contains("nodes live-a@a,live-b@b")
            && line("live").contains("re-create from its own archive"),
        "{out}"
    );
    assert!(line("young").contains("start its provision again"), "{out}");
    assert!(line("gone").contains("restore the tombstone"), "{out}");
    let (code, out, _) = recovery(&config, &["--dry-run", "--json"]);
    assert_eq!(code, 0);
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["revision"], snap.revision);
    assert!(keys(&api, &prefix).await.is_empty(), "--dry-run wrote");

    // The recovery.
    // The records only: the worker that re-creates the instances is tests/disaster.rs's.
    let (code, out, err) = recovery(&config, &["--records-only", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let actions: BTreeMap<&str, &str> = report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["id"].as_str().unwrap(), i["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        BTreeMap::from([
            ("gone", "keep-deleted"),
            ("live", "recover"),
            ("young", "provision-again")
        ])
    );
    let after = keys(&api, &prefix).await;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "the same keys"
    );
    for (k, v) in &before {
        let kind = k[prefix.len() + 1..].split('/').next().unwrap();
        let same =
            matches!(kind, "bindings" | "ports" | "catalog" | "secrets") || k.ends_with("/gone");
        if same {
            assert_eq!(&after[k], v, "{k} byte for byte");
        }
    }
    // Sealed values open as before.
    assert_eq!(
        store
            .binding("live", "b-1")
            .await
            .unwrap()
            .unwrap()
            .value
            .credentials,
        binding.credentials
    );
    assert_eq!(
        store.instance_secrets("live").await.unwrap().unwrap(),
        secrets
    );
    // "live": provisioning again from its own repository, on no node, same port.
    let live_before: InstanceRecord = decode(&before[&store.instance_key("live")]);
    let live: InstanceRecord = decode(&after[&store.instance_key("live")]);
    assert_eq!(live.state, InstanceState::Provisioning);
    assert!(live.nodes.is_empty());
    assert_eq!(live.port, live_before.port);
    let restore = live.restore.unwrap();
    assert_eq!(restore.kind, RestoreKind::Recover);
    assert_eq!(
        (
            restore.source.instance_id.as_str(),
            restore.source.repository.as_str()
        ),
        ("live", live_before.repository.as_str())
    );
    assert_eq!((restore.requested, restore.resolved), (None, None));
    let op: OperationRecord = decode(&after[&store.operation_key("live")]);
    assert_eq!(
        (op.kind, op.state, op.description.as_str()),
        (
            OperationKind::Provision,
            OperationState::InProgress,
            RECOVERING
        )
    );
    assert_ne!(op.id, ops["live"]);
    // "young": its provision, same id, starts again.
    let young: InstanceRecord = decode(&after[&store.instance_key("young")]);
    let op: OperationRecord = decode(&after[&store.operation_key("young")]);
    assert_eq!(young.state, InstanceState::Provisioning);
    assert_eq!(
        (op.id.as_str(), op.description.as_str()),
        (ops["young"].as_str(), PROVISION_AGAIN)
    );
    // The API reads them: last_operation of "live" says it is recovering.
    let (_, body) = api
        .call(
            axum::http::Method::GET,
            "/v2/service_instances/live/last_operation",
            None,
        )
        .await;
    assert_eq!(body["description"], RECOVERING, "{body}");

    // A second run: etcd is no longer empty.
    refused(
        &config,
        &[],
        &format!(
            "etcd already holds broker state under {prefix} ({} keys)",
            after.len()
        ),
    );
    assert_eq!(keys(&api, &prefix).await, after);
}
