//! The store against a real etcd (the test harness's).

use std::sync::Arc;

use super::*;
use crate::secrets::{Keyring, SecretsError};
use crate::test_etcd::etcd;
use std::time::Duration;

fn store() -> Store {
    Store::new(
        etcd().client(),
        etcd().fresh_prefix(),
        Arc::new(Keyring::from_base64(&Keyring::generate_key()).unwrap()),
    )
}

fn instance(id: &str, name: Option<&str>) -> (InstanceRecord, OperationRecord) {
    let now = Timestamp::now();
    let req = OperationRequest {
        plan_id: "plan".into(),
        parameters: Parameters::default(),
        node_count: 1,
    };
    (
        InstanceRecord {
            id: id.into(),
            service_id: "svc".into(),
            plan_id: "plan".into(),
            parameters: Parameters::default(),
            node_count: 1,
            context: InstanceContext {
                organization_guid: "org".into(),
                space_guid: "space".into(),
                instance_name: name.map(str::to_string),
                platform: None,
                raw: serde_json::Value::Null,
            },
            port: 0,
            read_only_port: None,
            path_name: None,
            repository: format!("file:///r/{id}"),
            incarnation: 1,
            previous: vec![],
            restore: None,
            purging: None,
            purged: None,
            final_lsn: None,
            dashboard_generation: 0,
            postgresql_major: None,
            last_backup_at: None,
            state: InstanceState::Provisioning,
            nodes: vec![],
            created_at: now,
            updated_at: now,
            deleted_at: None,
        },
        OperationRecord::new(id, OperationKind::Provision, req, "accepted", None),
    )
}

#[tokio::test]
async fn concurrent_port_allocations_never_share_a_port() {
    let s = store();
    // Two instances race for a range of one port: exactly one wins it.
    let (a, b) = tokio::join!(
        s.allocate_port("inst-a", 31000..=31000),
        s.allocate_port("inst-b", 31000..=31000)
    );
    let winners = [&a, &b].iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "{a:?} {b:?}");
    let loser = if a.is_ok() { b } else { a };
    assert!(matches!(loser, Err(StoreError::NoFreePort { .. })));
    // Many instances race for a larger range: all get distinct ports.
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.allocate_port(&format!("i{i}"), 31001..=31010).await })
        })
        .collect();
    let mut ports = Vec::new();
    for t in tasks {
        ports.push(t.await.unwrap().unwrap());
    }
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 6);
    // Allocation is idempotent per instance, and release needs the owner.
    let p = ports[0];
    let owner = s.port_owner(p).await.unwrap().unwrap();
    assert!(!s.release_port(p, "someone-else").await.unwrap());
    assert!(s.release_port(p, &owner).await.unwrap());
    assert_eq!(s.port_owner(p).await.unwrap(), None);
}

#[tokio::test]
async fn read_only_ports_are_given_once_reused_after_a_crash_and_released_with_the_instance() {
    let s = store();
    let (i, o) = instance("ro", None);
    s.create_instance(i, o, 33000..=33003).await.unwrap();
    let port = s.instance("ro").await.unwrap().unwrap().value.port;
    // A record written before read-only ports existed (no such field) decodes without one.
    let key = s.instance_key("ro");
    let mut raw: serde_json::Value =
        serde_json::from_slice(&s.etcd.get(key.as_bytes()).await.unwrap().unwrap().value).unwrap();
    assert!(raw.get("read_only_port").is_none(), "{raw}");
    raw["state"] = "ready".into();
    s.etcd
        .put(key.as_bytes(), raw.to_string().as_bytes())
        .await
        .unwrap();
    // A worker that reserved a port but stopped before recording it left `ports/<p>`: the
    // next attempt takes that one, not another.
    let leaked = s.allocate_port("ro", 33000..=33003).await.unwrap();
    assert_ne!(leaked, port);
    let ro = s.give_read_only_port("ro", 33000..=33003).await.unwrap();
    assert_eq!(ro, Some(leaked));
    let rec = s.instance("ro").await.unwrap().unwrap().value;
    assert_eq!((rec.port, rec.read_only_port), (port, Some(leaked)));
    assert_eq!(s.port_owner(leaked).await.unwrap().as_deref(), Some("ro"));
    // Given once.
    assert_eq!(
        s.give_read_only_port("ro", 33000..=33003).await.unwrap(),
        None
    );
    assert_eq!(s.used_ports(&(33000..=33003)).await.unwrap().len(), 2);
    // No instance, no port; a full range is an error and reserves nothing.
    assert_eq!(
        s.give_read_only_port("nobody", 33000..=33003)
            .await
            .unwrap(),
        None
    );
    let (j, jo) = instance("full", None);
    s.create_instance(j, jo, 33004..=33004).await.unwrap();
    assert!(matches!(
        s.give_read_only_port("full", 33004..=33004).await,
        Err(StoreError::NoFreePort { .. })
    ));
    // A deprovision releases both ports.
    let (vi, vo) = s.instance_and_operation("ro").await.unwrap();
    let (vi, vo) = (vi.unwrap(), vo.unwrap());
    let mut ni = vi.value.clone();
    ni.state = InstanceState::Deprovisioning;
    let dop = OperationRecord::new(
        "ro",
        OperationKind::Deprovision,
        vo.value.request.clone(),
        "deprovisioning",
        Some(&vo.value),
    );
    assert!(s.replace(&vi, &ni, Some(&vo), &dop).await.unwrap());
    // Being deleted: none given.
    assert_eq!(
        s.give_read_only_port("ro", 33000..=33003).await.unwrap(),
        None
    );
    s.finish_operation(
        "ro",
        &dop.id,
        Outcome {
            succeeded: true,
            description: "deleted".into(),
            instance_usable: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(s.port_owner(port).await.unwrap(), None);
    assert_eq!(s.port_owner(leaked).await.unwrap(), None);
}

#[tokio::test]
async fn concurrent_instance_creations_get_distinct_ports_and_one_id_wins_once() {
    let s = store();
    let (i1, o1) = instance("one", Some("db"));
    let (i2, o2) = instance("two", Some("db"));
    let (r1, r2) = tokio::join!(
        s.create_instance(i1.clone(), o1.clone(), 32000..=32001),
        s.create_instance(i2, o2, 32000..=32001)
    );
    let p = |r: &CreateInstance| match r {
        CreateInstance::Created { instance, .. } => instance.value.port,
        CreateInstance::Exists => panic!("exists"),
    };
    let (p1, p2) = (p(&r1.unwrap()), p(&r2.unwrap()));
    assert_ne!(p1, p2);
    // The same id again: Exists, nothing changed.
    let again = s.create_instance(i1, o1, 32000..=32005).await.unwrap();
    assert_eq!(again, CreateInstance::Exists);
    assert_eq!(s.instance("one").await.unwrap().unwrap().value.port, p1);
    // A full range.
    let (i3, o3) = instance("three", None);
    assert!(matches!(
        s.create_instance(i3, o3, 32000..=32001).await,
        Err(StoreError::NoFreePort { .. })
    ));
    assert_eq!(s.instance("three").await.unwrap(), None);
    let found = s.find_by_name("org", "space", "db").await.unwrap();
    assert_eq!(found.len(), 2);
    assert!(found.iter().all(|e| !e.deleted));
}

#[tokio::test]
async fn cas_refuses_stale_writes_and_the_worker_lifecycle() {
    let s = store();
    let (i, o) = instance("life", Some("my db/1"));
    let op_id = o.id.clone();
    let CreateInstance::Created {
        instance: vi,
        operation: vo,
    } = s.create_instance(i, o, 33000..=33010).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(
        s.operations_in_progress()
            .await
            .unwrap()
            .iter()
            .map(|o| o.value.id.clone())
            .collect::<Vec<_>>(),
        vec![op_id.clone()]
    );
    s.set_progress("life", &op_id, "placing nodes")
        .await
        .unwrap();
    // The versions read before set_progress are stale now.
    let mut stale = vi.value.clone();
    stale.state = InstanceState::Ready;
    assert!(!s.replace(&vi, &stale, Some(&vo), &vo.value).await.unwrap());
    assert!(matches!(
        s.set_progress("life", "other-op", "x").await,
        Err(StoreError::Superseded { .. })
    ));
    let inst = s
        .finish_operation(
            "life",
            &op_id,
            Outcome {
                succeeded: true,
                description: "ready".into(),
                instance_usable: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(inst.state, InstanceState::Ready);
    assert!(s.operations_in_progress().await.unwrap().is_empty());
    assert!(matches!(
        s.set_progress("life", &op_id, "x").await,
        Err(StoreError::Finished { .. })
    ));
    // Deprovision: port released, catalog entry kept and marked deleted, tombstone.
    let (vi, vo) = s.instance_and_operation("life").await.unwrap();
    let (vi, vo) = (vi.unwrap(), vo.unwrap());
    let mut ni = vi.value.clone();
    ni.state = InstanceState::Deprovisioning;
    let dop = OperationRecord::new(
        "life",
        OperationKind::Deprovision,
        vo.value.request.clone(),
        "deprovisioning",
        Some(&vo.value),
    );
    assert!(s.replace(&vi, &ni, Some(&vo), &dop).await.unwrap());
    let b = BindingRecord {
        instance_id: "life".into(),
        binding_id: "b1".into(),
        service_id: "svc".into(),
        plan_id: "plan".into(),
        request: serde_json::Value::Null,
        state: BindingState::Created,
        credentials: None,
        created_at: Timestamp::now(),
        updated_at: Timestamp::now(),
    };
    assert!(s.put_binding(&b, 0).await.unwrap().is_some());
    assert!(s.put_binding(&b, 0).await.unwrap().is_none());
    let port = ni.port;
    let done = s
        .finish_operation(
            "life",
            &dop.id,
            Outcome {
                succeeded: true,
                description: "deleted".into(),
                instance_usable: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(done.state, InstanceState::Deleted);
    assert_eq!(s.port_owner(port).await.unwrap(), None);
    assert!(s.bindings("life").await.unwrap().is_empty());
    let found = s.find_by_name("org", "space", "my db/1").await.unwrap();
    assert_eq!(found.len(), 1);
    assert!(found[0].deleted && found[0].deleted_at.is_some());
    let op = s.operation("life").await.unwrap().unwrap().value;
    assert_eq!(op.find(&op_id).unwrap().state, OperationState::Succeeded);
    assert_eq!(op.history.len(), 1);
}

#[tokio::test]
async fn catalog_keys_of_ids_and_incarnations_never_collide() {
    let s = store();
    // The first incarnation of `x/2` and the second of `x`, with one name.
    let (a, ao) = instance("x/2", Some("db"));
    let (mut b, bo) = instance("x", Some("db"));
    b.incarnation = 2;
    s.create_instance(a, ao, 35000..=35010).await.unwrap();
    s.create_instance(b, bo, 35000..=35010).await.unwrap();
    let mut found: Vec<(String, u32)> = s
        .find_by_name("org", "space", "db")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.instance_id, e.incarnation))
        .collect();
    found.sort();
    assert_eq!(found, [("x".to_string(), 2), ("x/2".to_string(), 1)]);
}

#[tokio::test]
async fn concurrent_transitions_both_apply() {
    let s = store();
    let (i, o) = instance("race", None);
    let op_id = o.id.clone();
    s.create_instance(i, o, 34000..=34000).await.unwrap();
    // Two writers append to the node list concurrently: CAS retries keep both changes.
    let (a, b) = tokio::join!(
        s.update_instance("race", |r| {
            r.nodes.push(NodePlacement {
                name: "n1".into(),
                cell: "a".into(),
                zone: "za".into(),
                pg_port: 0,
                api_port: 0,
            });
            Ok(())
        }),
        s.transition("race", &op_id, |r, op| {
            r.nodes.push(NodePlacement {
                name: "n2".into(),
                cell: "b".into(),
                zone: "zb".into(),
                pg_port: 0,
                api_port: 0,
            });
            op.description = "two nodes".into();
            Ok(())
        })
    );
    a.unwrap();
    b.unwrap();
    let r = s.instance("race").await.unwrap().unwrap().value;
    let mut names: Vec<_> = r.nodes.iter().map(|n| n.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["n1", "n2"]);
}

#[tokio::test]
async fn claims_exclude_other_workers_until_they_lapse() {
    let s = store();
    let ttl = Duration::from_millis(800);
    let ops = ClaimKind::Operations;
    assert!(s.claim("i", ops, "w1", ttl).await.unwrap());
    assert!(s.claim("i", ops, "w1", ttl).await.unwrap(), "renewal");
    assert!(!s.claim("i", ops, "w2", ttl).await.unwrap());
    // The backups of "i", and the operations of an instance "i/backup", are apart.
    assert!(s.claim("i", ClaimKind::Backups, "w2", ttl).await.unwrap());
    assert!(s.claim("i/backup", ops, "w3", ttl).await.unwrap());
    // Releasing someone else's claim does nothing; a lapsed claim can be taken.
    s.release_claim("i", ops, "w2").await.unwrap();
    assert!(!s.claim("i", ops, "w2", ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(s.claim("i", ops, "w2", ttl).await.unwrap());
    s.release_claim("i", ops, "w2").await.unwrap();
    assert!(s.claim("i", ops, "w1", ttl).await.unwrap());
}

#[tokio::test]
async fn secrets_are_created_once_and_removed_with_the_instance() {
    let s = store();
    let first = s
        .put_instance_secrets("sec", &InstanceSecrets::generate())
        .await
        .unwrap();
    let again = s
        .put_instance_secrets("sec", &InstanceSecrets::generate())
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(
        s.instance_secrets("sec").await.unwrap(),
        Some(first.clone())
    );
    let dbg = format!("{first:?}");
    assert!(!dbg.contains(first.superuser_password.expose()), "{dbg}");
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_bound_to_their_record_and_rotated() {
    let (k1, k2) = (Keyring::generate_key(), Keyring::generate_key());
    let prefix = etcd().fresh_prefix();
    let ring = |k: &str| Arc::new(Keyring::from_base64(k).unwrap());
    let s1 = Store::new(etcd().client(), &prefix, ring(&k1));
    let sec = s1
        .put_instance_secrets("a/b", &InstanceSecrets::generate())
        .await
        .unwrap();
    let now = Timestamp::now();
    let binding = BindingRecord {
        instance_id: "a/b".into(),
        binding_id: "b1".into(),
        service_id: "svc".into(),
        plan_id: "plan".into(),
        request: serde_json::Value::Null,
        state: BindingState::Created,
        credentials: Some(Credentials {
            uri: "postgres://b_b1:binding-pw-1234@h:1/app".into(),
            jdbc_url: "jdbc:postgresql://h:1/app?password=binding-pw-1234".into(),
            hostname: "h".into(),
            port: 1,
            name: "app".into(),
            username: "b_b1".into(),
            password: "binding-pw-1234".into(),
            read_only_uri: None,
            read_only_port: None,
            uri_multihost: None,
            jdbc_url_multihost: None,
        }),
        created_at: now,
        updated_at: now,
    };
    s1.put_binding(&binding, 0).await.unwrap().unwrap();
    let raw = |prefix: String| async move {
        etcd()
            .client()
            .get_prefix(prefix.as_bytes())
            .await
            .unwrap()
            .into_iter()
            .map(|kv| (kv.key_str(), String::from_utf8(kv.value).unwrap()))
            .collect::<Vec<_>>()
    };
    let clear = [
        sec.superuser_password.expose(),
        sec.replication_password.expose(),
        "binding-pw-1234",
    ];
    let stored = raw(format!("{prefix}/")).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    for (k, v) in &stored {
        for c in clear {
            assert!(!v.contains(c), "{k} holds a password in clear: {v}");
        }
    }
    assert_eq!(s1.instance_secrets("a/b").await.unwrap(), Some(sec.clone()));
    let b = s1.binding("a/b", "b1").await.unwrap().unwrap().value;
    assert_eq!(b.credentials, binding.credentials);
    assert_eq!(
        s1.bindings("a/b").await.unwrap()[0].value.credentials,
        binding.credentials
    );

    // A sealed value copied into another instance's record does not open there.
    let (_, sealed) = stored
        .iter()
        .find(|(k, _)| k.contains("/secrets/"))
        .unwrap()
        .clone();
    let c = etcd().client();
    c.put(s1.secrets_key("c").as_bytes(), sealed.as_bytes())
        .await
        .unwrap();
    let e = s1.instance_secrets("c").await.unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Secret {
                reason: SecretsError::Tampered(_),
                ..
            }
        ),
        "{e:?}"
    );
    c.delete(s1.secrets_key("c").as_bytes()).await.unwrap();
    // Written in clear by an earlier version: still read.
    let legacy = InstanceSecrets::generate();
    c.put(
        s1.secrets_key("legacy").as_bytes(),
        &serde_json::to_vec(&legacy).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        s1.instance_secrets("legacy").await.unwrap(),
        Some(legacy.clone())
    );

    // Rotation: the new key seals, the old one still opens; re-sealing leaves nothing
    // to the old key (nor in clear).
    let s2 = Store::new(
        etcd().client(),
        &prefix,
        Arc::new(Keyring::from_base64(&k2).unwrap().with_old(&k1).unwrap()),
    );
    assert_eq!(s2.instance_secrets("a/b").await.unwrap(), Some(sec.clone()));
    let done = s2.reseal_all().await.unwrap();
    assert_eq!(
        done,
        Resealed {
            rekeyed: 2,
            were_clear: 1,
            current: 0
        }
    );
    assert_eq!(s2.reseal_all().await.unwrap().current, 3);
    let s3 = Store::new(etcd().client(), &prefix, ring(&k2));
    assert_eq!(s3.instance_secrets("a/b").await.unwrap(), Some(sec.clone()));
    assert_eq!(
        s3.instance_secrets("legacy").await.unwrap(),
        Some(legacy.clone())
    );
    assert_eq!(
        s3.binding("a/b", "b1")
            .await
            .unwrap()
            .unwrap()
            .value
            .credentials,
        binding.credentials
    );
    let k2_id = Keyring::from_base64(&k2).unwrap().current_id().to_string();
    for (k, v) in raw(format!("{prefix}/")).await {
        assert!(v.contains(&format!("wa1:{k2_id}:")), "{k}: {v}");
        assert!(!v.contains(legacy.superuser_password.expose()), "{k}: {v}");
    }
    // The old key alone opens nothing any more.
    let e = Store::new(etcd().client(), &prefix, ring(&k1))
        .instance_secrets("a/b")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Secret {
                reason: SecretsError::UnknownKey(_),
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn key_components_are_encoded() {
    assert_eq!(encode_component("a-b_c.d~e9"), "a-b_c.d~e9");
    assert_eq!(encode_component("my db/1"), "my%20db%2F1");
    let id = new_id();
    assert_eq!(id.len(), 32);
    assert_ne!(id, new_id());
}

/// A clone's create transaction compares its source's record: a source changed since the
/// clone was validated (purged, deprovisioned) makes the API decide again, nothing written.
#[tokio::test]
async fn a_clone_is_not_created_when_its_source_changed() {
    let s = store();
    let (src, so) = instance("source", Some("src"));
    let CreateInstance::Created { instance: vs, .. } =
        s.create_instance(src, so, 36000..=36010).await.unwrap()
    else {
        panic!()
    };
    let seen = vs.mod_revision;
    s.update_instance("source", |i| {
        i.last_backup_at = Some(Timestamp::now());
        Ok(())
    })
    .await
    .unwrap();
    let (c, co) = instance("clone", Some("c"));
    let r = s
        .create_guarded(
            c.clone(),
            co.clone(),
            36000..=36010,
            None,
            Some(("source", seen)),
        )
        .await
        .unwrap();
    assert_eq!(r, CreateInstance::Exists);
    assert_eq!(s.instance("clone").await.unwrap(), None);
    assert!(s
        .find_by_name("org", "space", "c")
        .await
        .unwrap()
        .is_empty());
    let now = s.instance("source").await.unwrap().unwrap().mod_revision;
    let r = s
        .create_guarded(c, co, 36000..=36010, None, Some(("source", now)))
        .await
        .unwrap();
    assert!(matches!(r, CreateInstance::Created { .. }), "{r:?}");
}

/// Records written before majors have no `postgresql_major` and ran 15; new ones keep theirs.
#[test]
fn records_without_a_major_ran_15() {
    let (mut rec, _) = instance("old", None);
    let text = serde_json::to_value(&rec).unwrap();
    assert!(text.get("postgresql_major").is_none(), "{text}");
    let back: InstanceRecord = serde_json::from_value(text).unwrap();
    assert_eq!(back.major(), 15);
    rec.postgresql_major = Some(17);
    rec.parameters.postgresql_version = Some(17);
    let text = serde_json::to_value(&rec).unwrap();
    assert_eq!(text["parameters"]["postgresql-version"], 17, "{text}");
    let back: InstanceRecord = serde_json::from_value(text).unwrap();
    assert_eq!(
        (back.major(), back.parameters.postgresql_version),
        (17, Some(17))
    );
}
