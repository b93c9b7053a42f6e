//! Disaster recovery end to end (design §4.2): instances provisioned and bound through the
//! OSB API (a single, an ha one and a clone), written to continuously, then everything but the archives and the state snapshot
//! is lost (the broker, its HAProxy, every cell agent with its Patroni and PostgreSQL, etcd's
//! keys, the cells' data). On empty cells the real `walarchive-broker disaster-recovery`
//! re-creates every instance from its own archive, and the platform's *old* binding URIs work
//! again through the old router ports, holding every row committed before
//! `disaster − archive_timeout − 2 s`, even a binding whose password the archive does not
//! know. The measured RPO is printed.
use testkit::broker as common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::broker::BrokerToml;
use common::cells::{
    file_repository, local_sql, primary_as, test_root, wait_for, walarchive_copy, Cell,
};
use common::etcd::etcd;
use common::osb::Api;
use walarchive_broker::process::{signal, Signal};
use walarchive_broker::statebackup::StateBackup;

/// `archive_timeout` of the test's broker (seconds).
const ARCHIVE_TIMEOUT: u64 = 1;

/// The rows a writer committed: (id, when the commit returned).
type Commits = Arc<Mutex<Vec<(i32, SystemTime)>>>;

/// Inserts a row every 20 ms through `uri` until aborted (ids from `first` on), noting each
/// commit.
fn writer(uri: String, first: i32, commits: Commits) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let db = primary_as(uri).await.expect("the writer connects");
        for k in first.. {
            if db
                .execute("insert into t values ($1)", &[&k])
                .await
                .is_err()
            {
                return;
            }
            commits.lock().unwrap().push((k, SystemTime::now()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// The pids of processes whose command line mentions `dir`.
fn processes_under(dir: &Path) -> Vec<i32> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(&needle) {
                out.push(pid);
            }
        }
    }
    out
}

/// SIGKILLs HAProxy (from its pid file).
fn kill_haproxy(dir: &Path) {
    if let Ok(pid) = std::fs::read_to_string(dir.join("haproxy").join("haproxy.pid")) {
        if let Ok(pid) = pid.trim().parse::<u32>() {
            signal(pid, Signal::SIGKILL);
        }
    }
}

/// Kills the HAProxy the recovery left running (it outlives the broker) when the test ends,
/// passed or not.
struct HaproxyGuard<'a>(&'a Path);

impl Drop for HaproxyGuard<'_> {
    fn drop(&mut self) {
        kill_haproxy(self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_come_back_from_their_archives_with_their_old_uris() {
    tokio::time::timeout(Duration::from_secs(300), scenario())
        .await
        .expect("the scenario finishes within 5 minutes");
}

async fn scenario() {
    let t0 = Instant::now();
    let root = test_root("disaster");
    let bin = walarchive_copy(&root);
    let base = file_repository(&root);
    let cells = vec![Cell::start(&root, "a"), Cell::start(&root, "b")];
    for c in &cells {
        c.wait_ready().await;
    }
    let mut t = BrokerToml::new(&root, &base, &bin);
    t.cells = cells.iter().zip(["za", "zb"]).collect();
    let prefix = format!("/broker{}", etcd().fresh_prefix());
    let text = format!(
        "{}\n[state_backup]\nurl = \"file://{}/state-store\"\n",
        t.render(&prefix).replace(
            "archive_timeout = \"60s\"",
            &format!("archive_timeout = \"{ARCHIVE_TIMEOUT}s\"")
        ),
        root.display()
    )
    // The recovery's worker waits at most this long for the restores.
    .replace("[worker]\n", "[worker]\nrestore_timeout = \"3m\"\n");
    let _haproxy = HaproxyGuard(&root);
    let config = root.join("broker.toml");
    std::fs::write(&config, &text).unwrap();
    let c = Api::new(&text, &t.service, &t.plan);
    let diag = || {
        cells
            .iter()
            .map(|c| format!("--- cell {} ---\n{}\n", c.name, c.log_tail(20)))
            .collect::<String>()
    };
    let worker = c.spawn_worker();

    // --- The instances: a single and an ha one, bound, written to. ---
    let instances = [("single", 1u8), ("ha", 2u8)];
    let mut ops = Vec::new();
    for (id, nodes) in instances {
        ops.push(c.provision(id, nodes).await);
    }
    for ((id, _), op) in instances.iter().zip(&ops) {
        c.wait_succeeded(id, op, Duration::from_secs(150), &diag)
            .await;
    }
    eprintln!("provisioned at {:.1} s", t0.elapsed().as_secs_f64());
    let mut names = Vec::new();
    let mut uris = Vec::new();
    let mut writers = Vec::new();
    let mut commits = Vec::new();
    for (id, _) in instances {
        names.push(id);
        let uri = c.bind(id, &format!("{id}-app")).await;
        let db = wait_for(
            "the binding connects",
            Duration::from_secs(30),
            || primary_as(uri.clone()),
            &diag,
        )
        .await;
        db.batch_execute("create table t (id int primary key)")
            .await
            .unwrap();
        let seen: Commits = Arc::default();
        writers.push(writer(uri.clone(), 1, seen.clone()));
        commits.push(seen);
        uris.push(uri);
    }
    // A clone of "single" at its latest point, bound and written to: recovered from its own
    // archive like the others (never from its source's).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = c
        .provision_with(
            "copy",
            serde_json::json!({"node-count": 1, "clone-from": "single"}),
        )
        .await;
    assert_eq!(status, axum::http::StatusCode::ACCEPTED, "clone: {body}");
    c.wait_succeeded(
        "copy",
        body["operation"].as_str().unwrap(),
        Duration::from_secs(150),
        &diag,
    )
    .await;
    let uri = c.bind("copy", "copy-app").await;
    let seen: Commits = Arc::default();
    writers.push(writer(uri.clone(), 1_000_000, seen.clone()));
    commits.push(seen);
    uris.push(uri);
    names.push("copy");
    eprintln!("cloned at {:.1} s", t0.elapsed().as_secs_f64());
    // The first binding's password changed behind the broker's back (as a binding made
    // after the last archived segment would be missing): the archive no longer knows the
    // recorded one, and the old URI works after the recovery only because the recovery puts
    // every recorded binding's role back.
    let single = c.store.instance("single").await.unwrap().unwrap().value;
    let node = &single.nodes[0];
    let cell = cells.iter().find(|c| c.name == node.cell).unwrap();
    local_sql(
        cell,
        node.pg_port,
        "alter role \"b_single-app\" password 'not-the-recorded-one'",
    )
    .unwrap();
    // The platform's records, in a snapshot (as the broker's state-backup task writes them).
    let backup = StateBackup::open(&c.state.config, c.store.clone())
        .unwrap()
        .unwrap();
    let snap = backup.read_state().await.unwrap();
    backup.write(&snap).await.unwrap();
    // Writes go on for a while after the snapshot: rows need not be in it, only archived.
    tokio::time::sleep(Duration::from_secs(6)).await;

    // --- The disaster: the broker, HAProxy, every cell with its nodes, etcd's keys, the
    // cells' data. Only the archives and the state snapshots remain. ---
    let disaster = SystemTime::now();
    for cell in &cells {
        // SIGKILL, not a stop: Patroni and PostgreSQL first (no shutdown checkpoint, no last
        // segment archived on the way out), then the agent before it restarts them.
        let nodes = processes_under(&cell.data_root);
        assert!(nodes.len() >= 2, "cell {} runs no node", cell.name);
        for pid in nodes {
            signal(pid as u32, Signal::SIGKILL);
        }
        cell.kill();
    }
    worker.abort();
    let _ = worker.await;
    kill_haproxy(&root);
    for w in writers {
        w.abort();
        let _ = w.await;
    }
    for cell in &cells {
        // Anything started meanwhile is killed too.
        let start = Instant::now();
        loop {
            let left = processes_under(&cell.data_root);
            if left.is_empty() {
                break;
            }
            for pid in left {
                signal(pid as u32, Signal::SIGKILL);
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "processes of cell {} do not die",
                cell.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        std::fs::remove_dir_all(&cell.data_root).unwrap();
    }
    c.store
        .etcd()
        .delete_prefix(format!("{prefix}/").as_bytes())
        .await
        .unwrap();
    for cell in &cells {
        cell.restart();
        cell.wait_ready().await;
    }
    let committed: Vec<Vec<(i32, SystemTime)>> =
        commits.iter().map(|c| c.lock().unwrap().clone()).collect();
    eprintln!(
        "disaster at {:.1} s; rows committed: {:?}",
        t0.elapsed().as_secs_f64(),
        committed.iter().map(Vec::len).collect::<Vec<_>>()
    );

    // --- The recovery, by the real binary. ---
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_walarchive-broker"))
        .arg("disaster-recovery")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run walarchive-broker");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "disaster-recovery took {:.1} s:\n{stdout}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}\n{}", diag());
    for id in &names {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{id} {id} ")) && l.ends_with(" succeeded"))
            .unwrap_or_else(|| panic!("{id} succeeded in {stdout}"));
        let fields: Vec<&str> = line.split(' ').collect();
        assert!(
            fields[2].parse::<walarchive::Lsn>().is_ok(),
            "recovered-to LSN: {line}"
        );
    }
    assert!(stdout.contains("all 3 instances recovered"), "{stdout}");
    let ha = c.store.instance("ha").await.unwrap().unwrap().value;
    assert_eq!(ha.nodes.len(), 2, "the ha instance has its replica again");

    // --- The old URIs, through the old router ports: every row committed before
    // disaster − archive_timeout − 2 s is there. ---
    let bound = disaster - Duration::from_secs(ARCHIVE_TIMEOUT + 2);
    for ((id, uri), rows) in names.iter().zip(&uris).zip(&committed) {
        let db = wait_for(
            "the old binding URI connects to the recovered instance",
            Duration::from_secs(30),
            || primary_as(uri.clone()),
            &diag,
        )
        .await;
        let ids: Vec<i32> = db
            .query("select id from t order by id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let present: std::collections::HashSet<i32> = ids.iter().copied().collect();
        let must: Vec<i32> = rows
            .iter()
            .filter(|(_, at)| *at < bound)
            .map(|(k, _)| *k)
            .collect();
        assert!(
            must.len() > 50,
            "{id}: too few rows to judge: {}",
            must.len()
        );
        let lost: Vec<i32> = must
            .iter()
            .copied()
            .filter(|k| !present.contains(k))
            .collect();
        assert!(lost.is_empty(), "{id}: rows lost: {lost:?}");
        let newest = rows
            .iter()
            .filter(|(k, _)| present.contains(k))
            .map(|(_, at)| *at)
            .max()
            .expect("a surviving row");
        eprintln!(
            "{id}: {} of {} committed rows recovered; RPO {:.2} s (newest surviving commit before the disaster)",
            rows.iter().filter(|(k, _)| present.contains(k)).count(),
            rows.len(),
            disaster
                .duration_since(newest)
                .unwrap_or_default()
                .as_secs_f64()
        );
        // The recovered instance takes writes.
        db.execute("insert into t values (-1)", &[]).await.unwrap();
    }
    eprintln!("done at {:.1} s", t0.elapsed().as_secs_f64());
}
