//! `walarchive status`: the archive lag against a recovery point objective, on a real
//! PostgreSQL archiving into a local-directory repository. A healthy archive exits 0 and
//! reports no lag; an archive_command pointed at an unreachable store makes status report
//! the waiting segments and exit non-zero, and status recovers once archiving does; a
//! server that cannot be reached is reported, not fatal; an empty repository fails.

use testkit as common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The exit status of `status` when the recovery point objective is not met.
const RPO_NOT_MET: i32 = 13;

/// A connection string to a port nothing listens on.
fn closed_port_conn() -> String {
    format!("host=127.0.0.1 port={} user=postgres", free_port())
}

/// Runs `walarchive --repo URL status --pg-conn CONN [--pgdata DIR] ARGS...` as root, with
/// libpq's and PGDATA's variables of the caller's environment removed.
fn run_status(repo: &Repo, conn: &str, pgdata: Option<&Path>, args: &[&str]) -> Output {
    let mut c = walarchive_cmd();
    for k in [
        "PGDATA",
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
    ] {
        c.env_remove(k);
    }
    c.envs(repo.env.iter().map(|(k, v)| (k, v))).args([
        "--repo",
        &repo.url,
        "status",
        "--pg-conn",
        conn,
    ]);
    if let Some(d) = pgdata {
        c.arg("--pgdata").arg(d);
    }
    c.args(args).output().expect("run walarchive status")
}

/// `status --json` (plus `args`), expecting exit status `code`.
#[track_caller]
fn status_json(repo: &Repo, conn: &str, pgdata: Option<&Path>, args: &[&str], code: i32) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = run_status(repo, conn, pgdata, &a);
    assert_code(&out, code);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json printed no JSON ({e}):\n{}", stdout(&out)));
    eprintln!("status: {}", serde_json::to_string(&v).unwrap());
    v
}

fn conn_of(pg: &PgCluster) -> String {
    format!("host=127.0.0.1 port={} user=postgres", pg.port())
}

/// Whether `line` is a valid sample line of the Prometheus text format:
/// `^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? (-?[0-9.eE+-]+|NaN)$`.
fn is_sample_line(line: &str) -> bool {
    let name_len = line
        .bytes()
        .enumerate()
        .take_while(|&(i, b)| {
            b.is_ascii_alphabetic() || b == b'_' || b == b':' || (i > 0 && b.is_ascii_digit())
        })
        .count();
    if name_len == 0 {
        return false;
    }
    let mut rest = &line[name_len..];
    if let Some(labels) = rest.strip_prefix('{') {
        let Some(end) = labels.find('}') else {
            return false;
        };
        rest = &labels[end + 1..];
    }
    let Some(v) = rest.strip_prefix(' ') else {
        return false;
    };
    let digits = v.strip_prefix('-').unwrap_or(v);
    v == "NaN"
        || (!digits.is_empty()
            && digits
                .bytes()
                .all(|b| b.is_ascii_digit() || b".eE+-".contains(&b)))
}

/// Checks every line of a Prometheus exposition and returns `metric name -> value`.
#[track_caller]
fn parse_prometheus(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut helped = std::collections::BTreeSet::new();
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(helped.insert(name.to_string()), "HELP twice for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["gauge", "counter"].contains(&kind),
                "unexpected type: {line}"
            );
            assert!(helped.contains(name), "TYPE before HELP: {line}");
            assert!(typed.insert(name.to_string()), "TYPE twice for {name}");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        assert!(is_sample_line(line), "invalid sample line: {line:?}");
        let (series, v) = line.rsplit_once(' ').unwrap();
        let name = series.split('{').next().unwrap();
        assert!(typed.contains(name), "sample without TYPE: {line}");
        let v = if v == "NaN" {
            f64::NAN
        } else {
            v.parse().unwrap()
        };
        samples.insert(name.to_string(), v);
    }
    samples
}

#[test]
fn prometheus_line_checker_accepts_and_refuses() {
    for ok in [
        "a 1",
        "walarchive_rpo_ok 0",
        "x:y_1{a=\"b\",c=\"d\"} -1.5e+3",
        "n NaN",
    ] {
        assert!(is_sample_line(ok), "{ok}");
    }
    for bad in ["1a 1", "a", "a  1", "a b", "a{x=\"1\" 1", "a-b 1", "a 1 "] {
        assert!(!is_sample_line(bad), "{bad}");
    }
}

#[test]
fn healthy_archive_has_no_lag_and_exits_zero() {
    let repo = Store::File.fresh();
    let pg = repo.start_primary(PgOptions::default());
    let backup = repo.backup_push(&pg, &[]);
    let backup_name = backup["name"].as_str().unwrap().to_string();
    pg.switch_wal();
    pg.archive_everything();
    let archiver = pg.archiver_status();
    let last_archived = archiver.split('|').next().unwrap().to_string();
    let conn = conn_of(&pg);

    let v = status_json(&repo, &conn, Some(pg.data_dir()), &[], 0);
    assert_eq!(v["ok"], true);
    assert_eq!(v["problems"], serde_json::json!([]));
    assert_eq!(v["newest_archived_segment"], last_archived.as_str());
    assert_eq!(v["lag_segments"], 0);
    assert_eq!(v["lag_seconds"], 0.0);
    assert_eq!(v["ready_files"], 0);
    assert_eq!(v["rpo_seconds"], 600.0);
    assert!(v["ready_source"]
        .as_str()
        .unwrap()
        .starts_with("data directory"));
    assert_eq!(v["server"]["reachable"], true);
    assert_eq!(v["server"]["in_recovery"], false);
    assert_eq!(v["server"]["timeline"], 1);
    assert_eq!(v["server"]["archiver_failing"], false);
    assert_eq!(
        v["server"]["archiver"]["last_archived_wal"],
        last_archived.as_str()
    );
    assert!(v["server"]["archiver"]["archived_count"].as_i64().unwrap() >= 3);
    assert_eq!(v["backups"], 1);
    assert_eq!(v["last_backup"]["name"], backup_name.as_str());
    assert!(v["last_backup"]["age_seconds"].as_f64().unwrap() < 300.0);
    assert!(v["archived_wal_files"].as_u64().unwrap() >= 3);
    assert!(v["archived_wal_bytes"].as_u64().unwrap() > 0);
    let age = v["newest_archived_age_seconds"].as_f64().unwrap();
    assert!((0.0..300.0).contains(&age), "{age}");

    // Without --pgdata the .ready files are read through the server.
    let v = status_json(&repo, &conn, None, &[], 0);
    assert_eq!(v["ready_source"], "server");
    assert_eq!(v["ready_files"], 0);
    assert_eq!(v["lag_seconds"], 0.0);

    // A data directory that cannot be read falls back to the server.
    let v = status_json(&repo, &conn, Some(Path::new("/nonexistent")), &[], 0);
    assert_eq!(v["ready_source"], "server");
    assert_eq!(v["ready_files"], 0);

    // The readable block.
    let out = run_status(&repo, &conn, Some(pg.data_dir()), &[]);
    assert_success(&out);
    let text = stdout(&out);
    eprintln!("{text}");
    for needle in [
        format!("newest archived    {last_archived} at "),
        "archive lag        0 segments, 0s (RPO 10m 0s)".to_string(),
        format!("last backup        {backup_name} ended "),
        "status             OK".to_string(),
        ": primary, timeline 1, WAL position ".to_string(),
    ] {
        assert!(text.contains(&needle), "{needle:?} missing from:\n{text}");
    }

    // The Prometheus exposition.
    let out = run_status(&repo, &conn, Some(pg.data_dir()), &["--prometheus"]);
    assert_success(&out);
    let text = stdout(&out);
    eprintln!("{text}");
    let m = parse_prometheus(&text);
    for (name, want) in [
        ("walarchive_rpo_ok", 1.0),
        ("walarchive_rpo_seconds", 600.0),
        ("walarchive_archive_lag_seconds", 0.0),
        ("walarchive_archive_lag_segments", 0.0),
        ("walarchive_ready_files", 0.0),
        ("walarchive_backups", 1.0),
        ("walarchive_pg_up", 1.0),
        ("walarchive_pg_archive_failing", 0.0),
        ("walarchive_pg_archive_failed_total", 0.0),
        ("walarchive_info", 1.0),
        ("walarchive_push_errors_total", 0.0),
    ] {
        assert_eq!(m.get(name), Some(&want), "{name} in:\n{text}");
    }
    // wal-push's own counters, kept in pg_wal.
    assert!(m["walarchive_push_total"] >= 1.0, "{text}");
    assert!(m["walarchive_push_bytes_total"] >= 1048576.0, "{text}");
    for name in [
        "walarchive_last_archived_timestamp_seconds",
        "walarchive_last_backup_timestamp_seconds",
        "walarchive_last_backup_age_seconds",
        "walarchive_repository_wal_bytes",
        "walarchive_pg_archived_total",
        "walarchive_pg_wal_position_bytes",
        "walarchive_status_duration_seconds",
    ] {
        assert!(m.get(name).is_some_and(|v| *v > 0.0), "{name} in:\n{text}");
    }
    assert!(text.contains("# TYPE walarchive_pg_archived_total counter"));
    assert!(text.contains("one process per file"));

    // An unreachable server is reported, not fatal: the data directory still shows that
    // nothing waits.
    let v = status_json(&repo, &closed_port_conn(), Some(pg.data_dir()), &[], 0);
    assert_eq!(v["server"]["reachable"], false);
    assert!(
        v["server"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot connect to PostgreSQL"),
        "{v}"
    );
    assert_eq!(v["ready_files"], 0);
    assert_eq!(v["lag_seconds"], 0.0);
    assert_eq!(v["newest_archived_segment"], last_archived.as_str());
    // With neither a server nor a data directory the lag cannot be measured: that fails.
    let v = status_json(&repo, &closed_port_conn(), None, &[], RPO_NOT_MET);
    assert_eq!(v["ok"], false);
    assert_eq!(v["lag_seconds"], Value::Null);
    assert!(
        v["problems"][0]
            .as_str()
            .unwrap()
            .contains("cannot measure the archive lag"),
        "{v}"
    );
    let out = run_status(&repo, &closed_port_conn(), None, &["--prometheus"]);
    assert_code(&out, RPO_NOT_MET);
    let m = parse_prometheus(&stdout(&out));
    assert_eq!(m.get("walarchive_rpo_ok"), Some(&0.0));
    assert_eq!(m.get("walarchive_pg_up"), Some(&0.0));
    assert_eq!(m.get("walarchive_archive_lag_seconds"), None);
}

#[test]
/// status reports a lag and exits non-zero when archive_command is pointed at an unreachable
/// store, and recovers when it comes back.
fn lag_while_archive_command_points_at_an_unreachable_store_then_recovery() {
    let repo = Store::File.fresh();
    let pg = repo.start_primary(PgOptions::default());
    pg.archive_everything();
    let conn = conn_of(&pg);
    let data = pg.data_dir();
    status_json(&repo, &conn, Some(data), &[], 0);

    // archive_command now pushes to an S3 endpoint nothing listens on.
    let unreachable = format!(
        "AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
         AWS_ENDPOINT=http://127.0.0.1:{} AWS_ALLOW_HTTP=true {} --retries 1 \
         --request-timeout 5 --repo s3://unreachable/db wal-push %p",
        free_port(),
        walarchive_bin().display()
    );
    pg.psql(&format!(
        "alter system set archive_command = '{unreachable}'"
    ));
    pg.psql("select pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        pg.switch_wal();
    }
    pg.wait_until("archive_command to fail", Duration::from_secs(30), || {
        pg.psql("select failed_count from pg_stat_archiver") != "0"
    });
    std::thread::sleep(Duration::from_secs(2));

    let v = status_json(&repo, &conn, Some(data), &["--rpo", "1"], RPO_NOT_MET);
    assert_eq!(v["ok"], false);
    assert!(v["ready_files"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["lag_segments"].as_u64().unwrap() >= 1, "{v}");
    let lag = v["lag_seconds"].as_f64().unwrap();
    assert!(lag >= 2.0, "lag {lag}");
    assert_eq!(v["server"]["archiver_failing"], true);
    let problems = v["problems"].to_string();
    assert!(problems.contains("exceeds the RPO of 1s"), "{problems}");
    assert!(
        problems.contains("archive_command is failing"),
        "{problems}"
    );
    // Even within the RPO, a failing archive_command fails the status.
    let v = status_json(&repo, &conn, Some(data), &[], RPO_NOT_MET);
    assert!(
        !v["problems"].to_string().contains("exceeds the RPO"),
        "{v}"
    );
    // Without the server, the .ready files alone show the lag.
    let v = status_json(
        &repo,
        &closed_port_conn(),
        Some(data),
        &["--rpo", "1"],
        RPO_NOT_MET,
    );
    assert_eq!(v["server"]["reachable"], false);
    assert!(v["lag_seconds"].as_f64().unwrap() >= 2.0, "{v}");
    assert!(v["problems"].to_string().contains("exceeds the RPO"), "{v}");
    let out = run_status(&repo, &conn, Some(data), &["--rpo", "1", "--prometheus"]);
    assert_code(&out, RPO_NOT_MET);
    let m = parse_prometheus(&stdout(&out));
    assert_eq!(m.get("walarchive_rpo_ok"), Some(&0.0));
    assert_eq!(m.get("walarchive_pg_archive_failing"), Some(&1.0));
    assert!(m["walarchive_ready_files"] >= 1.0);
    assert!(m["walarchive_archive_lag_seconds"] >= 2.0);
    assert!(m["walarchive_pg_archive_failed_total"] >= 1.0);
    assert!(
        m["walarchive_push_errors_total"] >= 1.0,
        "wal-push counted its failures"
    );
    let out = run_status(&repo, &conn, Some(data), &["--rpo", "1"]);
    assert_code(&out, RPO_NOT_MET);
    let text = stdout(&out);
    eprintln!("{text}");
    assert!(text.contains("status             RPO NOT MET"), "{text}");
    assert!(text.contains(": FAILING"), "{text}");

    // The store comes back: archiving catches up and status recovers.
    pg.psql("alter system reset archive_command");
    pg.psql("select pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(500));
    let last = pg.switch_wal();
    pg.wait_archived(&last, Duration::from_secs(60));
    pg.wait_until("the .ready files to go", Duration::from_secs(30), || {
        std::fs::read_dir(data.join("pg_wal/archive_status"))
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().ends_with(".ready"))
    });
    let v = status_json(&repo, &conn, Some(data), &[], 0);
    assert_eq!(v["ok"], true);
    assert_eq!(v["ready_files"], 0);
    assert_eq!(v["lag_segments"], 0);
    assert_eq!(v["lag_seconds"], 0.0);
    assert_eq!(v["server"]["archiver_failing"], false);
    assert_eq!(v["newest_archived_segment"], last.as_str());
}

#[test]
fn a_standby_is_measured_from_its_replay_position() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.archive_everything();
    let standby = primary.basebackup_with(&["-R"]);
    standby.start_with_env(&repo.env);
    let last = primary.switch_wal();
    primary.wait_archived(&last, Duration::from_secs(60));
    let target = primary.psql("select pg_current_wal_lsn()");
    standby.wait_until("the standby to replay", Duration::from_secs(60), || {
        standby
            .try_psql(&format!("select pg_last_wal_replay_lsn() >= '{target}'"))
            .is_ok_and(|r| r == "t")
    });
    let v = status_json(&repo, &conn_of(&standby), Some(standby.data_dir()), &[], 0);
    assert_eq!(v["server"]["in_recovery"], true);
    assert_eq!(v["server"]["timeline"], 1);
    assert_eq!(v["server"]["wal_position"], target.as_str());
    assert_eq!(v["newest_archived_segment"], last.as_str());
    assert_eq!(v["lag_segments"], 0);
    assert_eq!(v["lag_seconds"], 0.0);
    assert!(v["notes"].to_string().contains("standby"), "{v}");
}

#[test]
fn an_empty_repository_fails() {
    let repo = Store::File.fresh();
    // No repository at all (a wrong URL): a configuration error, nothing printed.
    for args in [&["--json"][..], &["--prometheus"], &[]] {
        let out = run_status(&repo, &closed_port_conn(), None, args);
        assert_code(&out, 6);
        assert_eq!(stdout(&out), "");
        assert!(
            error_line(&out).contains(&format!("no walarchive repository at {}", repo.url)),
            "{}",
            stderr(&out)
        );
    }
    // A repository (its descriptor) that holds no WAL yet.
    let descriptor = serde_json::json!({
        "format_version": 1,
        "system_identifier": "7000000000000000001",
        "pg_version": 15,
        "wal_page_magic": 0xD110,
        "wal_segment_size": 1 << 20,
        "created_at": 0,
        "created_by": "tests/status.rs",
    });
    std::fs::create_dir_all(repo.path()).unwrap();
    std::fs::write(
        repo.path().join("walarchive.repo"),
        walarchive::format::encode(
            &serde_json::to_vec(&descriptor).unwrap(),
            walarchive::Compression::None,
            Some(&walarchive::format::Binding::new(
                7000000000000000001,
                "walarchive.repo",
            )),
        )
        .bytes,
    )
    .unwrap();
    let v = status_json(&repo, &closed_port_conn(), None, &[], RPO_NOT_MET);
    assert_eq!(v["newest_archived_segment"], Value::Null);
    assert_eq!(v["archived_wal_files"], 0);
    assert_eq!(v["backups"], 0);
    assert_eq!(v["last_backup"], Value::Null);
    assert!(
        v["problems"][0]
            .as_str()
            .unwrap()
            .contains("no archived WAL"),
        "{v}"
    );
    let out = run_status(&repo, &closed_port_conn(), None, &["--prometheus"]);
    assert_code(&out, RPO_NOT_MET);
    let m = parse_prometheus(&stdout(&out));
    assert_eq!(m.get("walarchive_rpo_ok"), Some(&0.0));
    assert_eq!(m.get("walarchive_repository_wal_files"), Some(&0.0));
    assert_eq!(m.get("walarchive_last_archived_timestamp_seconds"), None);
    let out = run_status(&repo, &closed_port_conn(), None, &[]);
    assert_code(&out, RPO_NOT_MET);
    assert!(stdout(&out).contains("newest archived    none"));
}
