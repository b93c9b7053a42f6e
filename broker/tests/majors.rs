//! Instances on every PostgreSQL major the broker offers, end to end with real etcd, four
//! cell agents (Patroni 4 from `scripts/setup`, every major's server), HAProxy and a
//! `file://` repository.
//!
//! One scenario, because each cluster costs seconds of two cores: the `postgresql-version`
//! 400s (unknown majors, a major change on update, a clone asking for another major than
//! its source's) are checked on the way; a 17 instance and a default (18) instance, two
//! nodes each, are provisioned, bound and written to through the router, their leaders'
//! machines are lost and the router follows the promoted replicas; a 16 instance's clone
//! runs 16.
use testkit::broker as common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;

use common::cells::{local_sql, primary_as, wait_for, walarchive, Cell};
use common::osb::Api;
use common::rig::Rig;

/// The index of the cell running `instance`'s leader.
async fn leader_cell(cells: &[Cell], instance: &str) -> Option<usize> {
    for (k, c) in cells.iter().enumerate() {
        let Ok(nodes) = c.client().nodes().await else {
            continue;
        };
        if nodes
            .iter()
            .any(|n| n.instance_id == instance && n.is_leader())
        {
            return Some(k);
        }
    }
    None
}

/// `select version()` and the row count of `t` through the binding `uri` (on a primary);
/// what failed is printed.
async fn version_and_rows(uri: &str) -> Option<(String, i64)> {
    let db = primary_as(uri.to_string()).await?;
    let v: String = match db.query_one("select version()", &[]).await {
        Ok(r) => r.get(0),
        Err(e) => {
            eprintln!("select version(): {e}");
            return None;
        }
    };
    match db.query_one("select count(*) from t", &[]).await {
        Ok(r) => Some((v, r.get(0))),
        Err(e) => {
            eprintln!("select count(*) from t: {e:?}");
            None
        }
    }
}

/// `GET` of instance `id` shows `postgresql-version` `major` (a string).
async fn shows_major(c: &Api, id: &str, major: u32) {
    let (s, b) = c
        .call(Method::GET, &format!("/v2/service_instances/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["parameters"]["postgresql-version"],
        major.to_string(),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_major_provisions_binds_fails_over_and_clones() {
    tokio::time::timeout(Duration::from_secs(600), scenario())
        .await
        .expect("the scenario finishes within 10 minutes");
}

async fn scenario() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .try_init();
    let rig = Rig::start("majors", &["a", "b", "c", "d"]).await;
    let (bin, cells) = (&rig.bin, &rig.cells);
    // Every cell says what it runs: each major installed, and Patroni 4.
    let report = cells[0].client().report().await.expect("cell report");
    for m in ["15", "16", "17", "18"] {
        assert!(report.majors.contains_key(m), "{report:?}");
    }
    assert!(
        report
            .patroni
            .as_deref()
            .is_some_and(|p| p.starts_with("patroni 4.")),
        "{report:?}"
    );
    let mut t = rig.toml();
    t.plan = "plan-ha".into();
    let prefix = rig.prefix();
    let c = Api::new(&t.render(&prefix), &t.service, &t.plan);
    let _worker = c.spawn_worker();
    let diag = || {
        cells
            .iter()
            .map(|c| format!("--- cell {} ---\n{}\n", c.name, c.log_tail(15)))
            .collect::<String>()
    };

    // --- Versions the broker does not offer: 400s naming the ones it does. ---
    for bad in [json!("14"), json!("19"), json!("17.1"), json!(true)] {
        let (s, b) = c
            .provision_with("bad", json!({"postgresql-version": bad}))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
        let d = b["description"].as_str().unwrap();
        assert!(d.contains("15, 16, 17, 18"), "{d}");
    }
    // The catalog offers them, 18 by default.
    let (_, cat) = c.call(Method::GET, "/v2/catalog", None).await;
    let schema = &cat["services"][0]["plans"][0]["schemas"]["service_instance"]["create"]
        ["parameters"]["properties"]["postgresql-version"];
    assert_eq!(schema["default"], "18", "{schema}");
    assert_eq!(schema["enum"], json!(["15", "16", "17", "18"]), "{schema}");

    // --- A 17 (asked as a string), an 18 (the default) and a 16 (asked as a number). ---
    let mut ops = Vec::new();
    for (id, p) in [
        ("pg17", json!({"node-count": 2, "postgresql-version": "17"})),
        ("pg18", json!({"node-count": 2})),
        ("pg16", json!({"node-count": 1, "postgresql-version": 16})),
    ] {
        let (s, b) = c.provision_with(id, p).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{id}: {b}");
        ops.push((id, b["operation"].as_str().unwrap().to_string()));
        // Placed before the next is recorded: on the least loaded cells, so that pg17's
        // and pg18's cells are disjoint.
        wait_for(
            "nodes placed",
            Duration::from_secs(60),
            || async {
                let i = c.store.instance(id).await.ok()??.value;
                (i.nodes.len() == usize::from(i.node_count)).then_some(())
            },
            diag,
        )
        .await;
    }
    for (id, op) in &ops {
        c.wait_succeeded(id, op, Duration::from_secs(240), &diag)
            .await;
    }
    let mut uris = Vec::new();
    for (id, major) in [("pg17", 17), ("pg18", 18), ("pg16", 16)] {
        let inst = c.store.instance(id).await.unwrap().unwrap().value;
        assert_eq!(inst.major(), major, "{id}");
        // (pg16's after its clone: a GET computes its archive's window, which the API keeps
        // 30 s, and the clone's latest point must be after the rows below.)
        if id != "pg16" {
            shows_major(&c, id, major).await;
        }
        let uri = c.bind(id, &format!("{id}-app")).await;
        let db = wait_for(
            "writes through the router",
            Duration::from_secs(30),
            || primary_as(uri.clone()),
            diag,
        )
        .await;
        db.batch_execute("create table t (id int); insert into t select generate_series(1, 50)")
            .await
            .unwrap();
        let (v, n) = version_and_rows(&uri).await.unwrap();
        assert!(v.starts_with(&format!("PostgreSQL {major}.")), "{id}: {v}");
        assert_eq!(n, 50);
        uris.push((id, major, uri));
    }

    // --- No in-place major upgrade; a clone keeps its source's major. ---
    let (s, b) = c
        .call(
            Method::PATCH,
            "/v2/service_instances/pg17?accepts_incomplete=true",
            Some(json!({"service_id": c.service, "parameters": {"postgresql-version": "18"}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(
        b["description"].as_str().unwrap().contains("PostgreSQL 17"),
        "{b}"
    );
    let (s, b) = c
        .provision_with(
            "clone-bad",
            json!({"clone-from": "pg16", "postgresql-version": "17"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let d = b["description"].as_str().unwrap();
    assert!(
        d.contains("runs PostgreSQL 16") && d.contains("pg_upgrade"),
        "{d}"
    );
    // pg16's rows archived (its leader switches WAL; archive_timeout is a minute): the
    // clone's default point, the latest archived one, has them.
    let p16 = c.store.instance("pg16").await.unwrap().unwrap().value;
    let k = leader_cell(cells, "pg16").await.expect("pg16 leader");
    let node = p16.nodes.iter().find(|n| n.cell == cells[k].name).unwrap();
    let segment = local_sql(
        &cells[k],
        node.pg_port,
        "select pg_walfile_name(pg_switch_wal())",
    )
    .unwrap();
    wait_for(
        "pg16's rows archived",
        Duration::from_secs(30),
        || {
            let (bin, repo, segment) = (bin.clone(), p16.repository.clone(), segment.clone());
            async move {
                let out = walarchive(&bin, &["--repo", &repo, "wal-list", "--json"]).ok()?;
                out.contains(&segment).then_some(())
            }
        },
        diag,
    )
    .await;
    // The worker took pg16's first backup at its provision: a clone can start from it (a
    // 503 while its archive cannot be read in time says to retry).
    let b = wait_for(
        "the clone accepted",
        Duration::from_secs(90),
        || async {
            let (s, b) = c
                .provision_with("clone16", json!({"node-count": 1, "clone-from": "pg16"}))
                .await;
            if s != StatusCode::ACCEPTED {
                eprintln!("clone16: {s} {b}");
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            (s == StatusCode::ACCEPTED).then_some(b)
        },
        diag,
    )
    .await;
    let op = b["operation"].as_str().unwrap().to_string();
    c.wait_succeeded("clone16", &op, Duration::from_secs(240), &diag)
        .await;
    shows_major(&c, "pg16", 16).await;
    shows_major(&c, "clone16", 16).await;
    let clone = c.store.instance("clone16").await.unwrap().unwrap().value;
    assert_eq!(clone.major(), 16);
    let uri = c.bind("clone16", "clone-app").await;
    let (v, n) = wait_for(
        "the clone through the router",
        Duration::from_secs(30),
        || version_and_rows(&uri),
        diag,
    )
    .await;
    assert!(v.starts_with("PostgreSQL 16."), "{v}");
    assert_eq!(n, 50);

    // --- Failover on 17 and 18: their leaders' machines are lost (disjoint cells: four
    // cells, two nodes each, placed on the least loaded). ---
    let l17 = leader_cell(cells, "pg17").await.expect("pg17 leader");
    let l18 = leader_cell(cells, "pg18").await.expect("pg18 leader");
    let p17 = c.store.instance("pg17").await.unwrap().unwrap().value;
    let p18 = c.store.instance("pg18").await.unwrap().unwrap().value;
    let cells17: Vec<&str> = p17.nodes.iter().map(|n| n.cell.as_str()).collect();
    let cells18: Vec<&str> = p18.nodes.iter().map(|n| n.cell.as_str()).collect();
    eprintln!("pg17 on {cells17:?} (leader cell {l17}), pg18 on {cells18:?} (leader cell {l18})");
    assert!(
        cells17.iter().all(|c| !cells18.contains(c)),
        "pg17 {cells17:?} and pg18 {cells18:?} share a cell"
    );
    cells[l17].kill();
    cells[l18].kill();
    for (id, major, uri) in &uris {
        if *id == "pg16" {
            continue;
        }
        let lost = if *id == "pg17" { l17 } else { l18 };
        let (cells, c) = (&cells, &c);
        // A replica on a live cell leads (the lost cell's agent answers nothing), and the
        // router reaches it: what it serves is no longer the old leader, which may take a
        // moment to die with its agent.
        let (v, n) = wait_for(
            "the router follows the new leader",
            Duration::from_secs(120),
            || async move {
                let k = leader_cell(cells, id).await?;
                if k == lost {
                    return None;
                }
                let db = primary_as(uri.to_string()).await?;
                let port: i32 = db
                    .query_one("select current_setting('port')::int", &[])
                    .await
                    .ok()?
                    .get(0);
                let inst = c.store.instance(id).await.ok()??.value;
                let leader = inst.nodes.iter().find(|n| n.cell == cells[k].name)?;
                if i32::from(leader.pg_port) != port {
                    return None;
                }
                version_and_rows(uri).await
            },
            diag,
        )
        .await;
        assert!(v.starts_with(&format!("PostgreSQL {major}.")), "{id}: {v}");
        assert_eq!(n, 50, "{id}");
    }
}
