//! End-to-end test of the cell agents, Patroni, etcd and HAProxy: a two-node cluster on two
//! cells, archived into a local-directory walarchive repository, survives the loss of its
//! leader's cell without losing synchronously committed rows, and the lost node rejoins; and
//! nodes bootstrapped from another cluster's archive (clones), restored to a target or failing
//! for good when the archive has a hole.
use testkit::broker as common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cells::{
    connect, conninfo, free_port, local_sql, primary_as, superuser, test_root, wait_for,
    walarchive, walarchive_copy, Cell,
};
use common::etcd::etcd;
use walarchive_broker::cell::{CellClient, DcsTiming, NodeSpec, NodeStatus, Secret};
use walarchive_broker::router::{Backend, Haproxy, Route, RouterOptions};

async fn status(client: &CellClient, node: &str) -> Option<NodeStatus> {
    client.node(node).await.ok().flatten()
}

/// Whether `leader` streams to `replica` (synchronously when `sync`).
fn streams_to(leader: &NodeStatus, replica: &str, sync: bool) -> bool {
    let Some(reps) = leader
        .patroni
        .as_ref()
        .and_then(|p| p.get("replication"))
        .and_then(|r| r.as_array())
    else {
        return false;
    };
    reps.iter().any(|r| {
        r.get("application_name").and_then(|v| v.as_str()) == Some(replica)
            && r.get("state").and_then(|v| v.as_str()) == Some("streaming")
            && (!sync || r.get("sync_state").and_then(|v| v.as_str()) == Some("sync"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cells_fail_over_and_rejoin() {
    let t0 = Instant::now();
    let etcd = etcd();
    let root = test_root("cells");
    let bin = walarchive_copy(&root);
    let instance = "inst1";
    let repo = format!("{}/{instance}", common::cells::file_repository(&root));
    let su_password = Secret::generate();

    let cells = [Cell::start(&root, "a"), Cell::start(&root, "b")];
    for c in &cells {
        c.wait_ready().await;
    }
    let clients: Vec<CellClient> = cells.iter().map(Cell::client).collect();
    let names = ["node1", "node2"];

    let spec = NodeSpec {
        instance_id: instance.into(),
        scope: None,
        namespace: format!("{}/patroni/", etcd.fresh_prefix()),
        etcd_hosts: vec![format!("127.0.0.1:{}", etcd.client_port)],
        etcd_tls: Some(common::cells::patroni_etcd_tls()),
        etcd_credentials: Some(common::cells::patroni_etcd_credentials()),
        repository: repo.clone(),
        walarchive: bin.clone(),
        walarchive_env: BTreeMap::new(),
        archive_timeout: 60,
        superuser_password: su_password.clone(),
        replication_password: Secret::generate(),
        rewind_password: Some(Secret::generate()),
        synchronous: true,
        synchronous_commit: None,
        host: "127.0.0.1".into(),
        // The other node's cell (both here): replication is accepted from it only.
        peer_hosts: vec!["127.0.0.1".into()],
        timing: DcsTiming {
            ttl: 10,
            loop_wait: 2,
            retry_timeout: 4,
            maximum_lag_on_failover: 16 << 20,
        },
        wal_segsize_mb: Some(1),
        bootstrap: None,
        major: None,
    };
    let mut ports = Vec::new();
    for (client, name) in clients.iter().zip(names) {
        let p = client.put_node(name, &spec).await.expect("PUT node");
        // Idempotent: the same spec again answers the same ports.
        assert_eq!(client.put_node(name, &spec).await.unwrap(), p);
        ports.push(p);
    }
    let logs: Vec<(String, std::path::PathBuf, std::path::PathBuf)> = cells
        .iter()
        .zip(names)
        .map(|(c, n)| {
            (
                c.name.clone(),
                c.log.clone(),
                c.data_root.join(n).join("patroni.log"),
            )
        })
        .collect();
    let diag = || {
        logs.iter()
            .map(|(cell, log, patroni)| {
                format!(
                    "--- cell {cell} ---\n{}\n--- {} ---\n{}\n",
                    common::cells::tail(log, 30),
                    patroni.display(),
                    common::cells::tail(patroni, 60)
                )
            })
            .collect::<String>()
    };

    // A leader and a synchronous streaming replica.
    let leader_idx = wait_for(
        "leader and synchronous replica",
        Duration::from_secs(180),
        || async {
            let s0 = status(&clients[0], names[0]).await?;
            let s1 = status(&clients[1], names[1]).await?;
            if s0.is_leader() && streams_to(&s0, names[1], true) {
                Some(0)
            } else if s1.is_leader() && streams_to(&s1, names[0], true) {
                Some(1)
            } else {
                None
            }
        },
        diag,
    )
    .await;
    let replica_idx = 1 - leader_idx;
    eprintln!(
        "leader: {} on cell {}",
        names[leader_idx], cells[leader_idx].name
    );

    // HAProxy routes to the leader.
    let router_dir = root.join("haproxy");
    let mut haproxy = Haproxy::new(
        "/usr/sbin/haproxy",
        &router_dir,
        RouterOptions {
            bind_address: "127.0.0.1".into(),
            source: Some("127.0.0.2".into()),
            ..RouterOptions::default()
        },
    );
    let route_port = free_port();
    let route = Route {
        name: instance.into(),
        port: route_port,
        read_only_port: None,
        backends: names
            .iter()
            .zip(&ports)
            .map(|(n, p)| Backend {
                name: n.to_string(),
                host: "127.0.0.1".into(),
                pg_port: p.pg_port,
                api_port: p.api_port,
            })
            .collect(),
    };
    assert!(haproxy
        .apply(std::slice::from_ref(&route))
        .await
        .expect("start HAProxy"));
    assert!(
        !haproxy.apply(std::slice::from_ref(&route)).await.unwrap(),
        "unchanged routes"
    );
    // The superuser exists on the leader's socket only: an application role made there
    // (replicated to the other node) is what connects through HAProxy.
    let pw = Secret::generate().expose().to_string();
    local_sql(
        &cells[leader_idx],
        ports[leader_idx].pg_port,
        &format!("create role tester login password '{pw}'; grant all on schema public to tester"),
    )
    .expect("an application role");
    let tester = |port: u16| conninfo("tester", port, &pw);
    let db = wait_for(
        "a primary through HAProxy",
        Duration::from_secs(30),
        || primary_as(tester(route_port)),
        || common::cells::tail(&router_dir.join("haproxy.log"), 20),
    )
    .await;
    // Neither the superuser nor the replication role gets in through the router, or over
    // the network at all for the superuser, whatever the password.
    let su = su_password.expose();
    for (who, c) in [
        ("superuser through the router", superuser(route_port, su)),
        (
            "superuser on the node's port",
            superuser(ports[leader_idx].pg_port, su),
        ),
        (
            "replication role through the router",
            conninfo("replicator", route_port, spec.replication_password.expose()),
        ),
    ] {
        let e = connect(&c)
            .await
            .err()
            .unwrap_or_else(|| panic!("{who} got in"));
        let m = e
            .as_db_error()
            .map_or(e.to_string(), |d| d.message().to_string());
        assert!(m.contains("pg_hba.conf rejects connection"), "{who}: {m}");
    }
    db.batch_execute("create table t (id int primary key, v text); insert into t select g, 'before' from generate_series(1, 100) g")
        .await
        .unwrap();

    // WAL reaches the repository (switching WAL takes the superuser, on the socket).
    let last = local_sql(
        &cells[leader_idx],
        ports[leader_idx].pg_port,
        "select pg_walfile_name(pg_switch_wal())",
    )
    .unwrap();
    wait_for(
        "switched WAL segment in the repository",
        Duration::from_secs(30),
        || {
            let (bin, repo, last) = (bin.clone(), repo.clone(), last.clone());
            async move {
                let out = walarchive(&bin, &["--repo", &repo, "wal-list"]).ok()?;
                out.contains(&last).then_some(())
            }
        },
        || walarchive(&bin, &["--repo", &repo, "wal-list"]).unwrap_or_else(|e| e),
    )
    .await;

    // A base backup through the leader's cell.
    let backup = clients[leader_idx]
        .backup(names[leader_idx])
        .await
        .expect("backup through the cell");
    let backup_name = backup.summary["name"]
        .as_str()
        .expect("backup name")
        .to_string();
    let list = walarchive(&bin, &["--repo", &repo, "backup-list"]).unwrap();
    assert!(list.contains(&backup_name), "{backup_name} not in:\n{list}");
    eprintln!("backup {backup_name} in {:.1} s", backup.seconds);

    // Rows committed synchronously right before the leader's cell dies.
    db.batch_execute("insert into t select g, 'last' from generate_series(101, 200) g")
        .await
        .unwrap();
    drop(db);

    // Kill the leader's cell: Patroni and PostgreSQL die with it.
    let killed_at = Instant::now();
    cells[leader_idx].kill();
    // The replica becomes the leader, and HAProxy sends writes to it. (Until the dead
    // leader's watchdog has killed its PostgreSQL, a connection may still reach it: hence
    // the promotion check first and `on conflict`.)
    let new_db = wait_for(
        "writes through HAProxy on the promoted replica after the leader's cell died",
        Duration::from_secs(60),
        || async {
            if !status(&clients[replica_idx], names[replica_idx])
                .await?
                .is_leader()
            {
                return None;
            }
            let c = primary_as(tester(route_port)).await?;
            c.batch_execute("insert into t values (1000, 'after') on conflict do nothing")
                .await
                .ok()?;
            let port: i32 = c
                .query_one("select current_setting('port')::int", &[])
                .await
                .ok()?
                .get(0);
            (port == i32::from(ports[replica_idx].pg_port)).then_some(c)
        },
        diag,
    )
    .await;
    let failover = killed_at.elapsed();
    eprintln!("failover took {:.1} s", failover.as_secs_f64());
    let n: i64 = new_db
        .query_one("select count(*) from t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 201, "rows written before the kill must survive");
    // The new leader's on_role_change callback switches WAL at once, so the new timeline's
    // first segment is archived now rather than after archive_timeout (60 s here).
    // Otherwise a replica cloned from the backup meanwhile finds only the old timeline's
    // full segment, which Patroni archives from the old leader before pg_rewind
    // (`_archive_ready_wals`), replays it past the fork point and then waits for the
    // new timeline's segment.
    wait_for(
        "the new timeline's first segment in the repository (on_role_change switch)",
        Duration::from_secs(20),
        || {
            let (bin, repo) = (bin.clone(), repo.clone());
            async move {
                let out = walarchive(&bin, &["--repo", &repo, "wal-list"]).ok()?;
                out.split_whitespace()
                    .any(|w| {
                        w.len() == 24
                            && w.starts_with("00000002")
                            && w.bytes().all(|b| b.is_ascii_hexdigit())
                    })
                    .then_some(())
            }
        },
        || walarchive(&bin, &["--repo", &repo, "wal-list"]).unwrap_or_else(|e| e),
    )
    .await;
    let new_leader = status(&clients[replica_idx], names[replica_idx])
        .await
        .unwrap();
    assert!(new_leader.is_leader(), "{new_leader:?}");

    // The killed cell comes back and its node rejoins as a replica.
    cells[leader_idx].restart();
    cells[leader_idx].wait_ready().await;
    wait_for(
        "old leader rejoined as a streaming replica",
        Duration::from_secs(120),
        || async {
            let old = status(&clients[leader_idx], names[leader_idx]).await?;
            let new = status(&clients[replica_idx], names[replica_idx]).await?;
            (old.role() == Some("replica")
                && old.pg_state() == Some("running")
                && streams_to(&new, names[leader_idx], false))
            .then_some(())
        },
        diag,
    )
    .await;
    let rejoined = connect(&tester(ports[leader_idx].pg_port))
        .await
        .expect("connect to the rejoined node");
    wait_for(
        "the row written after failover replicated to the rejoined node",
        Duration::from_secs(30),
        || async {
            let row = rejoined
                .query_one("select count(*) from t", &[])
                .await
                .ok()?;
            (row.get::<_, i64>(0) == 201).then_some(())
        },
        String::new,
    )
    .await;

    let old_log = cells[leader_idx]
        .data_root
        .join(names[leader_idx])
        .join("patroni.log");
    let how: Vec<String> = std::fs::read_to_string(&old_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.contains("rewind") || l.contains("replica has been created") || l.contains("reinit")
        })
        .map(str::to_string)
        .collect();
    eprintln!("how the old leader rejoined:\n{}", how.join("\n"));

    let _ = std::fs::copy(
        &old_log,
        root.join(format!("{}-before-delete.log", names[leader_idx])),
    );

    // Removing a node stops its PostgreSQL and removes its directory.
    let old_pg_port = ports[leader_idx].pg_port;
    assert!(clients[leader_idx]
        .delete_node(names[leader_idx])
        .await
        .unwrap());
    assert!(status(&clients[leader_idx], names[leader_idx])
        .await
        .is_none());
    assert!(!cells[leader_idx].data_root.join(names[leader_idx]).exists());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", old_pg_port)).is_err(),
        "PostgreSQL still listening after DELETE"
    );
    assert!(!clients[leader_idx]
        .delete_node(names[leader_idx])
        .await
        .unwrap());

    // A node created afresh now that a backup exists is cloned from the repository
    // (the walarchive replica method), not from the leader.
    clients[leader_idx]
        .put_node(names[leader_idx], &spec)
        .await
        .unwrap();
    wait_for(
        "a fresh node cloned from the backup streams from the leader",
        Duration::from_secs(120),
        || async {
            let fresh = status(&clients[leader_idx], names[leader_idx]).await?;
            let leader = status(&clients[replica_idx], names[replica_idx]).await?;
            (fresh.role() == Some("replica")
                && fresh.pg_state() == Some("running")
                && streams_to(&leader, names[leader_idx], false))
            .then_some(())
        },
        diag,
    )
    .await;
    let log = std::fs::read_to_string(&old_log).unwrap();
    assert!(
        log.contains("replica has been created using walarchive"),
        "fresh node not cloned from the backup:\n{log}"
    );

    haproxy.stop().await;
    eprintln!("total {:.1} s", t0.elapsed().as_secs_f64());
}

/// Every object file of a `file://` repository directory with its size.
fn listing(dir: &std::path::Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, e.metadata().unwrap().len());
            }
        }
    }
    out
}

/// A node spec of instance `id` on the test's etcd, bootstrapped from `bootstrap`.
fn clone_spec(
    id: &str,
    namespace: &str,
    repository: String,
    bin: &std::path::Path,
    bootstrap: walarchive_broker::cell::BootstrapSpec,
) -> NodeSpec {
    let etcd = etcd();
    NodeSpec {
        instance_id: id.into(),
        scope: None,
        namespace: namespace.into(),
        etcd_hosts: vec![format!("127.0.0.1:{}", etcd.client_port)],
        etcd_tls: Some(common::cells::patroni_etcd_tls()),
        etcd_credentials: Some(common::cells::patroni_etcd_credentials()),
        repository,
        walarchive: bin.to_path_buf(),
        walarchive_env: BTreeMap::new(),
        archive_timeout: 60,
        superuser_password: Secret::generate(),
        replication_password: Secret::generate(),
        rewind_password: Some(Secret::generate()),
        synchronous: false,
        synchronous_commit: None,
        host: "127.0.0.1".into(),
        peer_hosts: vec![],
        timing: DcsTiming {
            ttl: 10,
            loop_wait: 2,
            retry_timeout: 4,
            maximum_lag_on_failover: 16 << 20,
        },
        wal_segsize_mb: Some(1),
        bootstrap: Some(bootstrap),
        major: None,
    }
}

/// A node bootstrapped through its cell from an archive a plain PostgreSQL made (design
/// §2.4): restored at an LSN, it becomes the leader with exactly the rows committed before
/// it, the source's binding and group roles cannot log in, and it archives into its own
/// repository, never into its source's (whose `ALTER SYSTEM` archive_command is in the
/// backup). Another node, whose target lies beyond a segment of the source's archive that
/// cannot be read during its recovery (listed, but every GET of it answers 404), fails with
/// PostgreSQL's FATAL, stays stopped and is never restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_bootstrap_from_an_archive() {
    use testkit::{PgOptions, Store};
    use walarchive_broker::cell::{BootstrapSpec, BootstrapTarget};
    let t0 = Instant::now();
    let etcd = etcd();
    let root = test_root("cellboot");
    let bin = walarchive_copy(&root);
    let repos = common::cells::file_repository(&root);

    // The source: a plain PostgreSQL archiving into its repository, whose archive_command
    // is also in postgresql.auto.conf (what a restore would carry over).
    let src = Store::File.fresh();
    let primary = src.start_primary(PgOptions::default());
    primary.psql(&format!(
        "alter system set archive_command = '{} --repo {} wal-push %p'",
        testkit::walarchive_bin().display(),
        src.url
    ));
    primary.psql("select pg_reload_conf()");
    primary.psql(
        "create role g_app nologin; create role b_x login password 'source-pw' in role g_app; \
         create table t (id int primary key); insert into t select generate_series(1, 100)",
    );
    let backup = src.backup_push(&primary, &[]);
    let backup = backup["name"].as_str().unwrap().to_string();
    primary.psql("insert into t select generate_series(101, 200)");
    let target_ok = primary.psql("select pg_current_wal_lsn()");
    // A time in a pause of the writes: rows 1-200 are committed at or before it, 201- after.
    std::thread::sleep(Duration::from_millis(1100));
    let target_time = primary.psql(
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(Duration::from_millis(1100));
    primary.psql("insert into t select generate_series(201, 300)");
    let x = primary.switch_wal();
    primary.psql("insert into t select generate_series(301, 400)");
    let y = primary.switch_wal();
    primary.psql("insert into t select generate_series(401, 500)");
    let target_missing = primary.psql("select pg_current_wal_lsn()");
    primary.archive_everything();
    primary.stop();
    eprintln!(
        "backup {backup}, targets {target_ok} and {target_time} in {x}; {y} removed before {target_missing}"
    );
    // A segment between the failing node's backup and its target cannot be read during the
    // failing node's recovery: it is listed (so backup-fetch's check of the archive, which
    // refuses what PostgreSQL could not reach, passes), but every GET of it answers 404, as
    // when an object disappears between that check and the replay. PostgreSQL then ends
    // recovery before its target.
    let src_dir = src.path();
    let hole: Vec<String> = listing(&src_dir)
        .into_keys()
        .filter(|k| k.rsplit('/').next().unwrap().starts_with(y.as_str()))
        .collect();
    assert_eq!(hole.len(), 1, "{y}: {hole:?}");
    let source_before = listing(&src_dir);

    let cell = Cell::start(&root, "a");
    cell.wait_ready().await;
    let client = cell.client();
    let namespace = format!("{}/patroni/", etcd.fresh_prefix());
    let bootstrap = |target: BootstrapTarget| BootstrapSpec {
        source_repository: src.url.clone(),
        backup: backup.clone(),
        recovery_target: target,
        timeline: None,
        disable_roles: true,
        group_role: "g_app".into(),
        same_repository: false,
    };
    let ok_spec = clone_spec(
        "clone-ok",
        &namespace,
        format!("{repos}/clone-ok"),
        &bin,
        bootstrap(BootstrapTarget::Lsn(target_ok.clone())),
    );
    let time_spec = clone_spec(
        "clone-time",
        &namespace,
        format!("{repos}/clone-time"),
        &bin,
        bootstrap(BootstrapTarget::Time(target_time.clone())),
    );
    let mut bad_spec = clone_spec(
        "clone-bad",
        &namespace,
        format!("{repos}/clone-bad"),
        &bin,
        bootstrap(BootstrapTarget::Lsn(target_missing.clone())),
    );
    bad_spec.walarchive_env.insert(
        "WALARCHIVE_FAULTS".into(),
        Secret::new(format!("op=get key={y} fault=404")),
    );
    // A node may not archive into the repository it restores from.
    let mut loop_spec = ok_spec.clone();
    loop_spec.repository = src.url.clone();
    let e = client.put_node("clone-loop", &loop_spec).await.unwrap_err();
    assert!(e.to_string().contains("own repository"), "{e}");

    let ports = client.put_node("ok", &ok_spec).await.expect("PUT ok");
    client.put_node("bad", &bad_spec).await.expect("PUT bad");
    let time_ports = client.put_node("time", &time_spec).await.expect("PUT time");
    let diag = |node: &'static str| {
        let cell = &cell;
        move || {
            format!(
                "--- cell ---\n{}\n--- {node}/patroni.log ---\n{}",
                cell.log_tail(30),
                cell.patroni_log_tail(node, 80)
            )
        }
    };

    // The failing node: stopped, its failure told, never restarted.
    let failed = wait_for(
        "the node whose target is past the hole to fail",
        Duration::from_secs(120),
        || async {
            let s = status(&client, "bad").await?;
            let failed = s.restore.as_ref()?.failed.clone()?;
            (!s.running).then_some((failed, s.restarts))
        },
        diag("bad"),
    )
    .await;
    eprintln!(
        "failed after {:.1} s: {}",
        t0.elapsed().as_secs_f64(),
        failed.0
    );
    assert!(
        failed
            .0
            .contains("recovery ended before configured recovery target was reached"),
        "{failed:?}"
    );

    // The good node: the leader, restored to exactly its target.
    let leader = wait_for(
        "the restored node to lead",
        Duration::from_secs(120),
        || async { status(&client, "ok").await.filter(NodeStatus::is_leader) },
        diag("ok"),
    )
    .await;
    eprintln!("leader after {:.1} s", t0.elapsed().as_secs_f64());
    let restore = leader.restore.clone().expect("restore status");
    let progress = restore.progress.expect("progress");
    assert!(progress.done, "{progress:?}");
    assert_eq!(progress.backup, backup);
    assert_eq!(progress.bytes_done, progress.bytes_total);
    assert!(restore.replay.is_some(), "{leader:?}");
    assert_eq!(restore.failed, None);
    let sql = |q: &str| local_sql(&cell, ports.pg_port, q).unwrap();
    assert_eq!(sql("select count(*), max(id) from t"), "200|200");
    // The source's roles lost their login before anyone could use them.
    assert_eq!(
        sql("select string_agg(rolname || ':' || rolcanlogin, ',' order by rolname) from pg_roles where rolname in ('b_x', 'g_app')"),
        "b_x:false,g_app:false"
    );
    let Err(e) = connect(&conninfo("b_x", ports.pg_port, "source-pw")).await else {
        panic!("the source's binding role got into the clone");
    };
    let code = e.as_db_error().map(|d| d.code().code().to_string());
    assert!(matches!(code.as_deref(), Some("28P01" | "28000")), "{e:?}");
    assert_eq!(
        client.login_roles("ok", &["b_", "h_"]).await.unwrap(),
        Vec::<String>::new()
    );
    sql("create role b_new login");
    assert_eq!(
        client.login_roles("ok", &["b_", "h_"]).await.unwrap(),
        vec!["b_new".to_string()]
    );

    // Where it is: promoted, recovery stopped at the target.
    let wal = client.wal("ok").await.unwrap();
    assert!(!wal.in_recovery, "{wal:?}");
    let lsn = |s: &str| s.parse::<walarchive::Lsn>().unwrap();
    assert!(
        lsn(wal.replay_lsn.as_deref().unwrap()) >= lsn(&target_ok),
        "{wal:?}"
    );

    // It archives into its own repository (a new timeline), never into the source's.
    let switch = client.switch_wal("ok").await.unwrap();
    assert!(switch.archived, "{switch:?}");
    let pushed = client.push_history("ok").await.unwrap();
    assert!(!pushed.is_empty(), "no history file in pg_wal");
    let own = walarchive(&bin, &["--repo", &ok_spec.repository, "wal-list"]).unwrap();
    assert!(own.contains(&switch.segment), "{switch:?} not in\n{own}");
    for h in &pushed {
        assert!(
            own.contains(h.trim_end_matches(".history")),
            "{h} not in\n{own}"
        );
    }
    assert_eq!(
        listing(&src_dir),
        source_before,
        "the clone wrote into its source's repository"
    );

    // The node restored to a time holds what was committed at or before it.
    wait_for(
        "the node restored to a time to lead",
        Duration::from_secs(120),
        || async { status(&client, "time").await.filter(NodeStatus::is_leader) },
        diag("time"),
    )
    .await;
    assert_eq!(
        local_sql(&cell, time_ports.pg_port, "select count(*), max(id) from t").unwrap(),
        "200|200"
    );

    // The failed node is still stopped and was never restarted.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let bad = status(&client, "bad").await.unwrap();
    assert!(!bad.running, "{bad:?}");
    assert_eq!(bad.restarts, failed.1, "{bad:?}");
    assert_eq!(bad.restarts, 0, "{bad:?}");
    // It had replayed up to the hole: its counters are read from Patroni's data.failed.
    let replay = bad
        .restore
        .and_then(|r| r.replay)
        .expect("replay of the failed node");
    assert!(replay.last_restored.as_str() < y.as_str(), "{replay:?}");
    eprintln!("total {:.1} s", t0.elapsed().as_secs_f64());
}
