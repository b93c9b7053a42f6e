//! The dashboard's actions (`walarchive_broker::actions`) on a real cluster: etcd, three
//! cell agents with Patroni and PostgreSQL, HAProxy and a `file://` repository, driven by the
//! broker's own API and worker in the test process.
//!
//! One scenario on one two-node instance, because each cluster costs seconds of two cores:
//! a backup now (listed by `walarchive backup-list`, its node recorded), refusals while it
//! runs (another action, the platform's update), a switchover to the replica (roles swapped
//! in Patroni and through the router, a client reconnecting on the same port, the old
//! leader streaming again), the node count 2 → 3 through the action (a third node
//! streaming), and the platform's `last_operation` answering for its provision throughout.
use testkit::broker as common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use common::cells::{connect, local_sql, primary_as, wait_for, walarchive, Cell};
use common::osb::Api;
use common::rig::Rig;
use walarchive_broker::actions::{request, Action, ActionError};
use walarchive_broker::state::{ClaimKind, OperationKind, OperationRecord, OperationState};

const ID: &str = "acts";

/// The leader of `ID` as its cells see it: its name and the index of its cell.
async fn leader(cells: &[Cell]) -> Option<(String, usize)> {
    for (k, c) in cells.iter().enumerate() {
        let Ok(nodes) = c.client().nodes().await else {
            continue;
        };
        if let Some(n) = nodes.iter().find(|n| n.instance_id == ID && n.is_leader()) {
            return Some((n.name.clone(), k));
        }
    }
    None
}

/// The application names streaming from the node on `cells[k]` listening on `port`.
fn streaming(cells: &[Cell], k: usize, port: u16) -> Vec<String> {
    local_sql(
        &cells[k],
        port,
        "select application_name from pg_stat_replication where state = 'streaming' order by 1",
    )
    .map(|s| s.lines().map(str::to_string).collect())
    .unwrap_or_default()
}

/// Waits until operation `id` of `ID` is no longer in progress; the record.
async fn finished(c: &Api, id: &str, diag: &dyn Fn() -> String) -> OperationRecord {
    wait_for(
        "the action finished",
        Duration::from_secs(180),
        || async {
            let op = c.store.operation(ID).await.ok()??.value;
            (op.id != id || op.state != OperationState::InProgress).then_some(op)
        },
        diag,
    )
    .await
}

/// A switchover to `candidate` asked for by the user, which must be recorded (`recorded`
/// says why, as the failure message): the operation recorded, and once it finished.
async fn user_switchover(
    c: &Api,
    candidate: &str,
    recorded: &str,
    diag: &dyn Fn() -> String,
) -> (OperationRecord, OperationRecord) {
    let op = request(
        &c.state,
        ID,
        Action::Switchover {
            candidate: candidate.to_string(),
        },
        "user",
    )
    .await
    .expect(recorded);
    let done = finished(c, &op.id, diag).await;
    (op, done)
}

/// The platform's `last_operation` (with `operation` when given): status and body.
async fn last_operation(c: &Api, op: Option<&str>) -> (StatusCode, Value) {
    let q = op.map(|o| format!("?operation={o}")).unwrap_or_default();
    c.call(
        Method::GET,
        &format!("/v2/service_instances/{ID}/last_operation{q}"),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_switchover_and_node_count_from_the_dashboard() {
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
    let rig = Rig::start("actions", &["a", "b", "c"]).await;
    let (bin, cells) = (&rig.bin, &rig.cells);
    let t = rig.toml();
    let prefix = rig.prefix();
    let c = Api::new(&t.render(&prefix), &t.service, &t.plan);
    let _worker = c.spawn_worker();
    let diag = || {
        cells
            .iter()
            .map(|c| format!("--- cell {} ---\n{}\n", c.name, c.log_tail(15)))
            .collect::<String>()
    };

    let provision = c.provision(ID, 2).await;
    c.wait_succeeded(ID, &provision, Duration::from_secs(240), &diag)
        .await;
    let uri = c.bind(ID, "app").await;
    let db = wait_for(
        "writes through the router",
        Duration::from_secs(30),
        || primary_as(uri.clone()),
        diag,
    )
    .await;
    db.batch_execute("create table t (id int); insert into t select generate_series(1, 10)")
        .await
        .unwrap();
    let inst = c.store.instance(ID).await.unwrap().unwrap().value;
    let (old_leader, _) = leader(cells).await.expect("a leader");
    let replica = inst
        .nodes
        .iter()
        .find(|n| n.name != old_leader)
        .expect("a replica")
        .name
        .clone();

    // --- A backup now; refusals while it runs. Another broker's backup of the instance (its
    // claim, held here) keeps it waiting, so that it is still in progress while the test
    // asks for more. ---
    let other = "another-broker";
    assert!(c
        .store
        .claim(ID, ClaimKind::Backups, other, Duration::from_secs(60))
        .await
        .unwrap());
    let backup = request(&c.state, ID, Action::Backup, "operator")
        .await
        .expect("backup accepted");
    assert_eq!(backup.kind, OperationKind::Backup);
    assert_eq!(backup.requested_by.as_deref(), Some("operator"));
    let busy = request(
        &c.state,
        ID,
        Action::Switchover {
            candidate: replica.clone(),
        },
        "operator",
    )
    .await
    .expect_err("a second action while the backup runs");
    assert!(matches!(busy, ActionError::Busy(_)), "{busy:?}");
    assert_eq!(
        busy.to_string(),
        "A backup is in progress on this instance; try again when it has finished."
    );
    let (s, b) = c
        .call(
            Method::PATCH,
            &format!("/v2/service_instances/{ID}?accepts_incomplete=true"),
            Some(json!({"service_id": c.service, "parameters": {"node-count": 3}})),
        )
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("ConcurrencyError")),
        "{b}"
    );
    // The platform still sees its provision, with or without its id.
    for op in [Some(provision.as_str()), None] {
        let (s, b) = last_operation(&c, op).await;
        assert_eq!(
            (s, b["state"].as_str()),
            (StatusCode::OK, Some("succeeded")),
            "{b}"
        );
    }
    wait_for(
        "the backup waiting for the other broker's",
        Duration::from_secs(30),
        || async {
            let op = c.store.operation(ID).await.ok()??.value;
            op.description
                .contains("another broker's backup")
                .then_some(())
        },
        diag,
    )
    .await;
    assert!(c.store.backup_log(ID).await.unwrap().len() == 1);
    c.store
        .release_claim(ID, ClaimKind::Backups, other)
        .await
        .unwrap();
    let done = finished(&c, &backup.id, &diag).await;
    assert_eq!(
        (done.id.as_str(), done.state),
        (backup.id.as_str(), OperationState::Succeeded),
        "{done:?}\n{}",
        diag()
    );
    let listed = walarchive(bin, &["--repo", &inst.repository, "backup-list", "--json"]).unwrap();
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let names: Vec<String> = listed
        .as_array()
        .or_else(|| listed["backups"].as_array())
        .expect("a list of backups")
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    let log = c.store.backup_log(ID).await.unwrap();
    let taken = log.last().expect("the backup is logged");
    assert_eq!(taken.operation.as_deref(), Some(backup.id.as_str()));
    assert_eq!(
        (taken.node.as_str(), taken.requested_by.as_str()),
        (old_leader.as_str(), "operator")
    );
    assert!(
        names.contains(&taken.name),
        "{} not in {names:?}",
        taken.name
    );
    assert!(
        done.description.ends_with(&taken.name),
        "{}",
        done.description
    );
    // The first backup, the worker's own, is in the log too.
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].requested_by, "schedule");
    assert_eq!(log[0].node, old_leader);
    assert_eq!(names.len(), 2, "{names:?}");

    // --- A switchover to the replica. ---
    let unknown = request(
        &c.state,
        ID,
        Action::Switchover {
            candidate: "nosuch".into(),
        },
        "operator",
    )
    .await
    .expect_err("an unknown candidate");
    assert!(
        matches!(unknown, ActionError::UnknownCandidate { .. }),
        "{unknown:?}"
    );
    let router_pid: i32 = db
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let (sw, done) = user_switchover(&c, &replica, "switchover accepted", &diag).await;
    assert_eq!(
        (done.id.as_str(), done.state),
        (sw.id.as_str(), OperationState::Succeeded),
        "{done:?}\n{}",
        diag()
    );
    // Patroni's roles swapped; the router's port reaches the new leader, and a client
    // whose session the switchover ended connects again on the same port.
    let (now_leader, k) = leader(cells).await.expect("a leader");
    assert_eq!(now_leader, replica);
    let inst = c.store.instance(ID).await.unwrap().unwrap().value;
    let new_port = inst
        .nodes
        .iter()
        .find(|n| n.name == replica)
        .unwrap()
        .pg_port;
    assert!(
        db.query_one("select 1", &[]).await.is_err(),
        "the session on the old leader (pid {router_pid}) survived the switchover"
    );
    let db = wait_for(
        "a new session through the router",
        Duration::from_secs(30),
        || async { connect(&uri).await.ok() },
        diag,
    )
    .await;
    let row = db
        .query_one(
            "select pg_is_in_recovery(), current_setting('port')::int, count(*) from t",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, bool>(0),
            row.get::<_, i32>(1),
            row.get::<_, i64>(2)
        ),
        (false, i32::from(new_port), 10)
    );
    db.execute("insert into t values (11)", &[]).await.unwrap();
    // The old leader streams from the new one.
    assert_eq!(streaming(cells, k, new_port), vec![old_leader.clone()]);
    // A switchover to the leader there is: refused by the worker, nothing changed.
    let (_, done) = user_switchover(&c, &replica, "recorded", &diag).await;
    assert_eq!(
        (done.state, done.description.as_str()),
        (
            OperationState::Failed,
            format!("{replica} is already the leader; choose a replica.").as_str()
        )
    );
    assert_eq!(leader(cells).await.map(|l| l.0), Some(replica.clone()));

    // --- The node count: 2 → 3, the PATCH's own update. ---
    let out_of_range = request(&c.state, ID, Action::NodeCount(9), "operator")
        .await
        .expect_err("9 nodes");
    assert!(
        matches!(out_of_range, ActionError::NodeCount(_)),
        "{out_of_range:?}"
    );
    let unchanged = request(&c.state, ID, Action::NodeCount(2), "operator")
        .await
        .expect_err("already 2 nodes");
    assert!(
        matches!(unchanged, ActionError::Unchanged(2)),
        "{unchanged:?}"
    );
    let grow = request(&c.state, ID, Action::NodeCount(3), "operator")
        .await
        .expect("node count accepted");
    assert_eq!(grow.kind, OperationKind::Update);
    assert_eq!(grow.request.node_count, 3);
    c.wait_succeeded(ID, &grow.id, Duration::from_secs(240), &diag)
        .await;
    let inst = c.store.instance(ID).await.unwrap().unwrap().value;
    assert_eq!((inst.node_count, inst.nodes.len()), (3, 3));
    let (l, k) = leader(cells).await.expect("a leader");
    let port = inst.nodes.iter().find(|n| n.name == l).unwrap().pg_port;
    let third = wait_for(
        "two replicas streaming",
        Duration::from_secs(60),
        || {
            let s = streaming(cells, k, port);
            async move { (s.len() == 2).then_some(s) }
        },
        diag,
    )
    .await;
    assert!(third.contains(&old_leader), "{third:?}");

    // --- The platform's operations still answer, and the history has every action with
    // its times and who asked. ---
    let (s, b) = last_operation(&c, Some(&provision)).await;
    assert_eq!(
        (s, b["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{b}"
    );
    let op = c.store.operation(ID).await.unwrap().unwrap().value;
    let kinds: Vec<(OperationKind, Option<&str>)> = op
        .history
        .iter()
        .map(|h| (h.kind, h.requested_by.as_deref()))
        .chain([(op.kind, op.requested_by.as_deref())])
        .collect();
    assert_eq!(
        kinds,
        vec![
            (OperationKind::Provision, None),
            (OperationKind::Backup, Some("operator")),
            (OperationKind::Switchover, Some("user")),
            (OperationKind::Switchover, Some("user")),
            (OperationKind::Update, Some("operator")),
        ]
    );
    assert!(op
        .history
        .iter()
        .all(|h| h.started_at.is_some() && h.finished_at.is_some()));
}
