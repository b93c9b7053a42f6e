//! Point-in-time recovery exactness and timelines. One transaction inserts one row with a
//! sequence number; after a restore to a target, the table must hold exactly the rows
//! committed before the target (inclusive or exclusive as asked), for times, LSNs,
//! transaction IDs and named restore points. The recovery settings written for PostgreSQL are
//! read back by PostgreSQL itself (`postgres -C`), backslashes and quotes included.

use testkit as common;

use std::sync::OnceLock;
use std::time::Duration;

use common::*;

/// One committed row: its number, transaction ID, commit time, and a time halfway to the
/// next row's commit.
struct Row {
    xid: String,
    commit: String,
    midway: String,
}

struct Source {
    repo: Repo,
    _primary: PgCluster,
    rows: Vec<Row>,
    lsn_after_30: String,
}

const ROWS: usize = 60;

/// Commit timestamps give the exact times to aim at.
const COMMIT_TIMESTAMPS: &str = "track_commit_timestamp = on\n";

/// A primary that took a backup, then committed rows 1..=60 one transaction each.
fn source() -> &'static Source {
    static S: OnceLock<Source> = OnceLock::new();
    S.get_or_init(|| {
        let repo = Store::File.fresh();
        let primary = repo.start_primary(PgOptions {
            extra_conf: COMMIT_TIMESTAMPS.into(),
            ..Default::default()
        });
        primary.psql("create table seq(n int primary key)");
        repo.backup_push(&primary, &[]);
        let mut lsn_after_30 = String::new();
        for n in 1..=ROWS {
            primary.psql(&format!("insert into seq values ({n})"));
            if n == 30 {
                lsn_after_30 = primary.psql("select pg_current_wal_insert_lsn()");
            }
            if n == 40 {
                primary.psql("select pg_create_restore_point('after_40')");
            }
        }
        primary.archive_everything();
        let fmt = |e: &str| {
            format!("to_char(({e}) at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
        };
        let ts = "pg_xact_commit_timestamp(xmin)";
        let listing = primary.psql(&format!(
            "select xmin::text || '|' || {} || '|' || coalesce({}, '') from seq order by n",
            fmt(ts),
            fmt(&format!("{ts} + (lead({ts}) over (order by n) - {ts}) / 2"))
        ));
        let rows: Vec<Row> = listing
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                Row {
                    xid: f[0].to_string(),
                    commit: f[1].to_string(),
                    midway: f[2].to_string(),
                }
            })
            .collect();
        assert_eq!(rows.len(), ROWS);
        Source {
            repo,
            _primary: primary,
            rows,
            lsn_after_30,
        }
    })
}

/// Restores LATEST with `args`, lets recovery finish and promote, returns "count:max".
fn recover(repo: &Repo, args: &[&str]) -> String {
    let mut a = args.to_vec();
    a.extend(["--target-action", "promote"]);
    let c = repo.restore("LATEST", &a);
    c.append_conf("archive_mode = off\n");
    c.start_with_env(&repo.env);
    c.wait_promoted();
    c.psql("select count(*) || ':' || coalesce(max(n), 0) from seq")
}

fn row(n: usize) -> &'static Row {
    &source().rows[n - 1]
}

#[test]
fn time_inclusive() {
    assert_eq!(
        recover(&source().repo, &["--target-time", &row(20).commit]),
        "20:20"
    );
}

#[test]
fn time_exclusive() {
    let args = ["--target-time", &row(20).commit, "--target-exclusive"];
    assert_eq!(recover(&source().repo, &args), "19:19");
}

#[test]
fn time_between_commits() {
    assert_eq!(
        recover(&source().repo, &["--target-time", &row(15).midway]),
        "15:15"
    );
}

#[test]
fn xid_inclusive_and_exclusive() {
    let s = source();
    assert_eq!(recover(&s.repo, &["--target-xid", &row(25).xid]), "25:25");
    let args = ["--target-xid", &row(25).xid, "--target-exclusive"];
    assert_eq!(recover(&s.repo, &args), "24:24");
}

#[test]
fn lsn() {
    let s = source();
    assert_eq!(
        recover(&s.repo, &["--target-lsn", &s.lsn_after_30]),
        "30:30"
    );
}

#[test]
fn restore_point() {
    assert_eq!(
        recover(&source().repo, &["--target-name", "after_40"]),
        "40:40"
    );
}

#[test]
fn immediate_and_no_target() {
    let s = source();
    assert_eq!(recover(&s.repo, &["--target-immediate"]), "0:0");
    assert_eq!(recover(&s.repo, &[]), format!("{ROWS}:{ROWS}"));
}

#[test]
fn targets_are_written_for_postgresql() {
    let s = source();
    let c = s.repo.restore(
        "LATEST",
        &[
            "--target-xid",
            &row(5).xid,
            "--target-timeline",
            "current",
            "--target-action",
            "pause",
            "--target-exclusive",
        ],
    );
    let auto = std::fs::read_to_string(c.data_dir().join("postgresql.auto.conf")).unwrap();
    for line in [
        format!("recovery_target_xid = '{}'", row(5).xid),
        "recovery_target_inclusive = 'false'".to_string(),
        "recovery_target_timeline = 'current'".to_string(),
        "recovery_target_action = 'pause'".to_string(),
        format!(
            "restore_command = '{} --repo {} wal-fetch %f %p'",
            walarchive_bin().display(),
            s.repo.url
        ),
    ] {
        assert!(auto.contains(&line), "missing {line:?} in:\n{auto}");
    }
    assert!(c.data_dir().join("recovery.signal").exists());
    assert!(c.data_dir().join("backup_label").exists());
    let standby = s.repo.restore("LATEST", &["--standby"]);
    assert!(standby.data_dir().join("standby.signal").exists());
    assert!(!standby.data_dir().join("recovery.signal").exists());
}

/// Restore to a point, promote (a new timeline, archived into the same repository), write
/// there; then later restores can follow either the new timeline or the old one.
#[test]
fn timelines() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions {
        extra_conf: COMMIT_TIMESTAMPS.into(),
        ..Default::default()
    });
    primary.psql("create table seq(n int primary key)");
    repo.backup_push(&primary, &[]);
    let mut xid_10 = String::new();
    for n in 1..=20 {
        let xid = primary.psql(&format!("insert into seq values ({n}) returning xmin"));
        if n == 10 {
            xid_10 = xid;
        }
    }
    primary.archive_everything();

    // A clone at row 10 that keeps archiving (its configuration came with the backup).
    let clone = repo.restore(
        "LATEST",
        &["--target-xid", &xid_10, "--target-action", "promote"],
    );
    clone.start_with_env(&repo.env);
    clone.wait_promoted();
    assert_eq!(
        clone.psql("select count(*) || ':' || max(n) from seq"),
        "10:10"
    );
    clone.psql("insert into seq select g from generate_series(1001, 1005) g");
    let last = clone.switch_wal();
    assert!(last.starts_with("00000002"), "{last}");
    clone.wait_archived(&last, Duration::from_secs(120));
    let names = repo.wal_names();
    assert!(names.contains(&"00000002.history".to_string()), "{names:?}");

    // Following the newest timeline gives the clone's history; timeline 1 the original's.
    assert_eq!(recover(&repo, &["--target-timeline", "latest"]), "15:1005");
    assert_eq!(recover(&repo, &["--target-timeline", "1"]), "20:20");
}

/// A standby promoted while the store is down must not take a timeline the archive already
/// holds. Timeline 2's history is in the archive (an earlier promotion of another restore of
/// this backup) and the standby has never seen it (`recovery_target_timeline = 'current'`:
/// it probes no history file before promotion). In the outage, the promotion's probe of
/// `00000002.history` gets 207 (walarchive has no record that the file is absent), so
/// PostgreSQL stops instead of selecting timeline 2; once the store is back, a promotion
/// finds timeline 2 and selects 3.
#[test]
fn a_standby_promoted_in_an_outage_never_takes_an_archived_timeline() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.psql("create table t(n int)");
    repo.backup_push(&primary, &[]);
    primary.psql("insert into t values (1)");
    let fork = primary.psql("select pg_current_wal_lsn()");
    primary.archive_everything();
    let history = primary.dir().join("00000002.history");
    std::fs::write(
        &history,
        format!("1\t{fork}\tno recovery target specified\n"),
    )
    .unwrap();
    assert_success(&repo.run(&[
        "wal-push",
        "--pgdata",
        primary.data_dir().to_str().unwrap(),
        history.to_str().unwrap(),
    ]));

    let standby = repo.restore("LATEST", &["--standby", "--target-timeline", "current"]);
    standby.start_with_env(&repo.env);
    assert_eq!(standby.psql("select count(*) from t"), "1");
    standby.stop();
    // The outage: every download fails, whatever the number of attempts.
    let mut outage = repo.env.clone();
    outage.extend([
        (
            "WALARCHIVE_FAULTS".to_string(),
            "op=get fault=503".to_string(),
        ),
        ("WALARCHIVE_RETRIES".into(), "2".into()),
    ]);
    standby.start_with_env(&outage);
    let log_before = standby.log().len();
    let out = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(standby.bin("pg_ctl"))
        .args(["-D", standby.data_dir().to_str().unwrap(), "-W", "promote"])
        .current_dir("/tmp")
        .output()
        .unwrap();
    assert_success(&out);
    standby.wait_until("the standby to stop", Duration::from_secs(90), || {
        !standby.is_running()
    });
    let log = standby.log()[log_before..].to_string();
    assert!(
        log.contains("refuses to guess")
            && log.contains("could not restore file \"00000002.history\" from archive"),
        "{log}"
    );
    assert!(!log.contains("selected new timeline ID"), "{log}");
    assert!(standby.data_dir().join("standby.signal").exists());

    // The store is back: the same standby, promoted again, takes timeline 3.
    standby.start_with_env(&repo.env);
    standby.promote();
    standby.wait_promoted();
    assert!(
        standby.log().contains("selected new timeline ID: 3"),
        "{}",
        standby.log_tail(40)
    );
    let last = standby.switch_wal();
    assert!(last.starts_with("00000003"), "{last}");
    standby.wait_archived(&last, Duration::from_secs(60));
    let names = repo.wal_names();
    assert!(
        names.contains(&"00000002.history".to_string())
            && names.contains(&"00000003.history".to_string()),
        "{names:?}"
    );
}

/// The recovery settings backup-fetch writes reach PostgreSQL unchanged: its configuration
/// lexer reads `\` inside a quoted value as an escape, so a restore_command or a restore
/// point name holding a backslash (or a quote) must be escaped for it, and `postgres -C`
/// shows what PostgreSQL made of the file.
#[test]
fn recovery_settings_with_backslashes_and_quotes_read_back_exactly() {
    let pg = PgCluster::init(PgOptions::default());
    let command =
        r#"/opt/wal\bin/walarchive --repo 'file:///srv/it''s\a\nb' wal-fetch %f "%p" \101"#;
    let name = r"point\one 'two'";
    let recovery = walarchive_restore::recovery::Recovery {
        target: Some(walarchive_restore::recovery::Target::Name(name.into())),
        ..Default::default()
    };
    let text = walarchive_restore::recovery::settings("b1", command, &recovery);
    let auto = pg.data_dir().join("postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto).unwrap();
    conf.push_str(&text);
    std::fs::write(&auto, conf).unwrap();
    let shown = |setting: &str| {
        let out = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg.bin("postgres"))
            .args(["-C", setting, "-D"])
            .arg(pg.data_dir())
            .current_dir("/tmp")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "postgres -C {setting}: {stderr}\n{text}"
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .trim_end_matches('\n')
            .to_string()
    };
    assert_eq!(shown("restore_command"), command, "{text}");
    assert_eq!(shown("recovery_target_name"), name, "{text}");
}

/// A point-in-time restore toward the latest timeline that stops on timeline 1 before
/// timeline 2 began, in the segment holding timeline 2's switch point (a clone at a time
/// just before its source's failover): PostgreSQL promotes it as timeline 3 with a history
/// whose switch points go backwards. Its archiver must store that history (a refusal loops
/// forever), and the repository it archives into must verify clean.
#[test]
fn a_restore_stopping_before_a_switch_point_archives_its_backwards_history() {
    let a = Store::File.fresh();
    let primary = a.start_primary(PgOptions {
        extra_conf: COMMIT_TIMESTAMPS.into(),
        ..Default::default()
    });
    primary.psql("create table seq(n int primary key)");
    a.backup_push(&primary, &[]);
    let (mut xid_15, mut wal_10, mut wal_15) = (String::new(), String::new(), String::new());
    for n in 1..=20 {
        let xid = primary.psql(&format!("insert into seq values ({n}) returning xmin"));
        let wal = || primary.psql("select pg_walfile_name(pg_current_wal_insert_lsn())");
        match n {
            10 => wal_10 = wal(),
            15 => (xid_15, wal_15) = (xid, wal()),
            _ => {}
        }
    }
    let t = primary.psql(
        "select to_char(pg_xact_commit_timestamp(xmin) at time zone 'UTC', \
         'YYYY-MM-DD HH24:MI:SS.US') || '+00' from seq where n = 10",
    );
    primary.archive_everything();
    // The target (row 10) lies in the segment where timeline 2 will branch off (row 15).
    assert_eq!(wal_10, wal_15, "rows 10 to 15 in one segment");

    // Timeline 2: a restore at row 15, promoted, archiving into the same repository.
    let tl2 = a.restore(
        "LATEST",
        &["--target-xid", &xid_15, "--target-action", "promote"],
    );
    tl2.start_with_env(&a.env);
    tl2.wait_promoted();
    let last = tl2.switch_wal();
    assert!(last.starts_with("00000002"), "{last}");
    tl2.wait_archived(&last, Duration::from_secs(120));

    // A clone at row 10's commit, following the latest timeline, archiving into B.
    let b = Store::File.fresh();
    let clone = a.restore(
        "LATEST",
        &["--target-time", &t, "--target-action", "promote"],
    );
    clone.append_conf(&b.archive_conf());
    clone.start_with_env(&a.env);
    clone.wait_promoted();
    assert_eq!(
        clone.psql("select count(*) || ':' || max(n) from seq"),
        "10:10"
    );
    let history =
        std::fs::read_to_string(clone.data_dir().join("pg_wal/00000003.history")).unwrap();
    let points: Vec<&str> = history
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('\t').nth(1).unwrap())
        .collect();
    let lsn = |s: &str| {
        let (hi, lo) = s.split_once('/').unwrap();
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
    };
    assert!(
        points.len() == 2 && lsn(points[1]) < lsn(points[0]),
        "PostgreSQL writes the switch points backwards: {history:?}"
    );

    let last = clone.switch_wal();
    assert!(last.starts_with("00000003"), "{last}");
    clone.wait_until(
        "timeline 3 archived into B",
        Duration::from_secs(60),
        || {
            let names = b.wal_names();
            names.contains(&"00000003.history".to_string()) && names.contains(&last)
        },
    );
    assert_eq!(
        clone.psql("select failed_count from pg_stat_archiver"),
        "0",
        "{}",
        clone.log_tail(20)
    );
    let out = b.run(&["wal-verify"]);
    assert!(
        out.status.success(),
        "wal-verify on B: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
