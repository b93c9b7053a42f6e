//! Base backups and point-in-time restore against real PostgreSQL and real object stores:
//! round trips on every backend, exact PITR to times, LSNs, transaction IDs and restore
//! points, timelines, backups from a standby, tablespaces, interrupted and tampered backups.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

fn archive_conf(repo: &Repo) -> String {
    format!("{}track_commit_timestamp = on\n", repo.archive_conf())
}

const PGBENCH_DIGEST: &str = "select (select count(*) || ':' || md5(string_agg(aid || ':' || abalance, ',' order by aid)) from pgbench_accounts) \
     || '/' || (select count(*) from pgbench_history) || '/' || (select sum(bbalance) from pgbench_branches)";

fn wait_promoted(c: &PgCluster) {
    c.wait_until("recovery to finish", Duration::from_secs(180), || {
        c.try_psql("select pg_is_in_recovery()")
            .is_ok_and(|r| r == "f")
    });
}

fn archive_everything(pg: &PgCluster) {
    let last = pg.switch_wal();
    pg.wait_archived(&last, Duration::from_secs(120));
}

/// Workload, a backup taken during the workload, more workload, restore LATEST, compare.
fn round_trip(store: Store) {
    let repo = store.fresh();
    let primary = PgCluster::init(PgOptions {
        extra_conf: archive_conf(&repo),
        ..Default::default()
    });
    primary.start_with_env(&repo.env);
    primary.pgbench_init(5);
    let summary = std::thread::scope(|s| {
        let load = s.spawn(|| primary.pgbench(&["-c", "2", "-T", "6"]));
        let summary = repo.backup_push(&primary, &[]);
        load.join().unwrap();
        summary
    });
    assert_eq!(summary["complete"], true);
    primary.pgbench(&["-c", "2", "-t", "300"]);
    let expected = primary.psql(PGBENCH_DIGEST);
    archive_everything(&primary);

    let list = repo.backup_list(false);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], summary["name"]);
    let restored = repo.restore("LATEST", &["--target-action", "promote"]);
    restored.append_conf("archive_mode = off\n");
    let mode = fs::metadata(restored.data_dir()).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o700
    );
    restored.start_with_env(&repo.env);
    wait_promoted(&restored);
    assert_eq!(restored.psql(PGBENCH_DIGEST), expected);
}

#[test]
fn round_trip_file() {
    round_trip(Store::File);
}

#[test]
fn round_trip_s3() {
    round_trip(Store::S3);
}

#[test]
fn round_trip_azure() {
    round_trip(Store::Azure);
}
