//! End to end: a real primary archives through `walarchive wal-push %p` into S3, Azure and
//! a local directory; every archived segment decodes to the bytes in pg_wal; a standby built
//! from a base backup taken before the workload replays everything through
//! `walarchive wal-fetch %f %p` alone (no streaming) and ends up with the primary's data;
//! promoting it archives a timeline history file into the same repository.

use testkit as common;

use std::fs;
use std::time::Duration;

use common::*;

/// Keep archived segments in pg_wal, to compare them with the repository's copies.
const KEEP_WAL: &str = "wal_keep_size = 512MB
";

const TABLE_DIGEST: &str =
    "select count(*) || ':' || md5(string_agg(id::text || payload, ',' order by id)) from items";

fn archive_and_replay(store: Store) {
    let repo = store.fresh();
    let primary = repo.start_primary(PgOptions {
        extra_conf: KEEP_WAL.into(),
        ..Default::default()
    });
    // The standby's starting point: a base backup taken before the workload.
    let standby = primary.basebackup();

    primary.psql("create table items(id bigint primary key, payload text)");
    for batch in 0..4 {
        primary.psql(&format!(
            "insert into items select g, repeat(md5(g::text), 4) from generate_series({}, {}) g",
            batch * 25_000 + 1,
            (batch + 1) * 25_000
        ));
    }
    let end_lsn = primary.psql("select pg_current_wal_insert_lsn()");
    let last = primary.switch_wal();
    primary.wait_archived(&last, Duration::from_secs(180));
    let status = primary.archiver_status();
    assert!(
        status.ends_with("|0"),
        "pg_stat_archiver shows failures: {status}"
    );

    // Every archived segment is in the repository and decodes to pg_wal's bytes.
    let done = primary.done_segments();
    assert!(done.len() >= 20, "only {} segments archived", done.len());
    repo.assert_archived_intact(&primary, &done);
    // pg_basebackup made PostgreSQL archive a backup history file too.
    assert!(
        repo.wal_list().iter().any(|e| e["kind"] == "backup"),
        "no backup history file archived"
    );

    // A standby fed only by restore_command replays to the end.
    standby.append_conf(&repo.restore_conf());
    standby.touch("standby.signal");
    standby.start_with_env(&repo.env);
    standby.wait_until(
        "the standby to replay the archive",
        Duration::from_secs(180),
        || {
            standby
                .try_psql(&format!(
                    "select pg_last_wal_replay_lsn() >= '{end_lsn}'::pg_lsn"
                ))
                .is_ok_and(|r| r == "t")
        },
    );
    assert_eq!(standby.psql(TABLE_DIGEST), primary.psql(TABLE_DIGEST));
    assert!(standby.psql(TABLE_DIGEST).starts_with("100000:"));
    // Both sides counted what they did, beside the WAL (status --pgdata reports it).
    let counters = |pg: &PgCluster| -> serde_json::Value {
        let text = fs::read_to_string(pg.wal_dir().join("walarchive-metrics.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let pushed = counters(&primary);
    assert!(
        pushed["push_total"].as_u64().unwrap() >= done.len() as u64,
        "{pushed}"
    );
    assert_eq!(pushed["push_errors_total"], 0, "{pushed}");
    assert!(pushed["push_stored_bytes_total"].as_u64().unwrap() > 0);
    let fetched = counters(&standby);
    assert!(fetched["fetch_total"].as_u64().unwrap() >= 20, "{fetched}");
    assert!(
        fetched["fetch_not_found_total"].as_u64().unwrap() >= 1,
        "{fetched}"
    );
    assert_eq!(fetched["fetch_errors_total"], 0, "{fetched}");
    assert!(
        standby.log().contains("restored log file"),
        "replay did not come from the archive"
    );

    // Promotion: the new timeline's history file lands in the same repository.
    standby.promote();
    standby.psql("insert into items values (0, 'after promotion')");
    let tl2_last = standby.switch_wal();
    assert!(tl2_last.starts_with("00000002"), "{tl2_last}");
    standby.wait_archived(&tl2_last, Duration::from_secs(120));
    let entries = repo.wal_list();
    assert!(
        entries.iter().any(|e| e["name"] == "00000002.history"),
        "no history file"
    );
    assert!(
        entries.iter().any(|e| e["name"] == tl2_last.as_str()),
        "no timeline 2 segment"
    );
    let scratch = TestDir::new("walarchive-e2e-");
    let dest = scratch.join("history");
    assert_success(&run_walarchive(
        &[
            "--repo",
            &repo.url,
            "wal-fetch",
            "00000002.history",
            dest.to_str().unwrap(),
        ],
        &repo.env,
    ));
    assert_eq!(
        fs::read(&dest).unwrap(),
        fs::read(standby.wal_dir().join("00000002.history")).unwrap()
    );
}

#[test]
fn archive_and_replay_s3() {
    archive_and_replay(Store::S3);
}

#[test]
fn archive_and_replay_azure() {
    archive_and_replay(Store::Azure);
}

#[test]
fn archive_and_replay_file() {
    archive_and_replay(Store::File);
}

/// Segment size is a cluster property the repository records; default and large sizes work.
fn segment_size(mb: u32) {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions {
        wal_segsize_mb: mb,
        extra_conf: KEEP_WAL.into(),
        ..Default::default()
    });
    primary.psql("create table t as select g from generate_series(1, 1000) g");
    primary.switch_wal();
    primary.psql("insert into t select g from generate_series(1, 1000) g");
    let last = primary.switch_wal();
    primary.wait_archived(&last, Duration::from_secs(120));
    let out = run_walarchive(&["--repo", &repo.url, "repo-info", "--json"], &[]);
    let d: serde_json::Value = serde_json::from_slice(&assert_success(&out).stdout).unwrap();
    assert_eq!(d["wal_segment_size"], u64::from(mb) << 20);
    let scratch = TestDir::new("walarchive-seg-");
    let dest = scratch.join("seg");
    assert_success(&run_walarchive(
        &[
            "--repo",
            &repo.url,
            "wal-fetch",
            &last,
            dest.to_str().unwrap(),
        ],
        &[],
    ));
    assert_eq!(
        fs::read(&dest).unwrap(),
        fs::read(primary.wal_dir().join(&last)).unwrap()
    );
}

#[test]
fn segment_size_16mb() {
    segment_size(16);
}

#[test]
fn segment_size_64mb() {
    segment_size(64);
}
