//! Proves the test harness in tests/common works: PostgreSQL as the postgres
//! user (including environment reaching archive_command), base backups and
//! standbys, the walarchive binary copy, s3s-fs/moto and Azurite; and that
//! `WALARCHIVE_TEST_PG` picks the PostgreSQL every test runs.

use testkit as common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;

#[test]
fn postgres_cluster_starts_with_1mb_segments() {
    let pg = PgCluster::init(PgOptions::default());
    pg.start();
    assert_eq!(pg.psql("select 1"), "1");
    assert_eq!(pg.psql("show wal_segment_size"), "1MB");
    assert_eq!(pg.psql("show port"), pg.port().to_string());
    assert!(pg.is_running());
    assert!(pg.wal_dir().is_dir());
    pg.restart();
    assert_eq!(pg.psql("select 2"), "2");
    assert!(pg.try_psql("select * from no_such_table").is_err());
    assert!(pg
        .log()
        .contains("database system is ready to accept connections"));
    pg.stop();
    assert!(!pg.is_running());
}

/// `WALARCHIVE_TEST_PG=N` runs the tests on PostgreSQL N, read here from the environment
/// itself (not through the harness's own answer): the server a default cluster starts says
/// so, and every program the harness runs on it (initdb, pg_ctl, psql, pgbench,
/// pg_basebackup, pg_waldump, pg_controldata), as well as a base backup's copy, is of that
/// major. A suite asked for 18 must never run on 15 unnoticed.
#[test]
fn walarchive_test_pg_selects_the_server() {
    let wanted: u32 = match std::env::var("WALARCHIVE_TEST_PG") {
        Ok(v) if !v.is_empty() => v.parse().expect("WALARCHIVE_TEST_PG is a major"),
        _ => 15,
    };
    let version = server_version(wanted);
    assert!(version.starts_with(&format!("{wanted}.")), "{version}");
    let pg = PgCluster::init(PgOptions::default());
    pg.start();
    assert_eq!(pg.major(), wanted);
    let num: u32 = pg.psql("show server_version_num").parse().unwrap();
    assert_eq!(num / 10000, wanted, "server_version_num {num}");
    let banner = pg.psql("select version()");
    assert!(
        banner.starts_with(&format!("PostgreSQL {version} ")),
        "{banner} (wanted {version})"
    );
    let data_version = std::fs::read_to_string(pg.data_dir().join("PG_VERSION")).unwrap();
    assert_eq!(data_version.trim(), wanted.to_string());
    for program in [
        "initdb",
        "pg_ctl",
        "postgres",
        "psql",
        "pgbench",
        "pg_basebackup",
        "pg_waldump",
        "pg_controldata",
    ] {
        let out = std::process::Command::new(pg.bin(program))
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let said = stdout(&out);
        assert_eq!(
            version_in_banner(&said),
            Some(version.as_str()),
            "{program} --version: {said}"
        );
    }
    let copy = pg.basebackup();
    assert_eq!(copy.major(), wanted);
    copy.start();
    assert_eq!(copy.psql("show server_version_num"), num.to_string());
}

/// The environment given to `start_with_env` must reach archive_command, and
/// survive a restart.
#[test]
fn start_env_reaches_archive_command() {
    let pg = PgCluster::init(PgOptions::default());
    let archive = pg.dir().join("archive");
    let marker = pg.dir().join("marker");
    pg.append_conf(&format!(
        "archive_mode = on\n\
         archive_command = 'echo \"$WALARCHIVE_TEST_MARKER\" > {marker} && cp %p {archive}/%f'",
        marker = marker.display(),
        archive = archive.display()
    ));
    std::fs::create_dir(&archive).unwrap();
    chown_postgres(&archive);
    pg.start_with_env(&[(
        "WALARCHIVE_TEST_MARKER".into(),
        "hello from the harness".into(),
    )]);
    let seg = pg.switch_wal();
    pg.wait_archived(&seg, Duration::from_secs(30));
    assert!(
        archive.join(&seg).is_file(),
        "{seg} not in {}",
        archive.display()
    );
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "hello from the harness"
    );

    std::fs::remove_file(&marker).unwrap();
    pg.restart();
    let seg = pg.switch_wal();
    pg.wait_archived(&seg, Duration::from_secs(30));
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "hello from the harness"
    );
}

#[test]
fn basebackup_standby_and_pgbench() {
    let primary = PgCluster::init(PgOptions::default());
    primary.start();
    primary.pgbench_init(1);
    let out = primary.pgbench(&["-c", "2", "-t", "50", "-n"]);
    assert!(
        out.contains("number of transactions actually processed"),
        "{out}"
    );

    let standby = primary.basebackup();
    assert_ne!(standby.port(), primary.port());
    standby.append_conf(&format!("primary_conninfo = '{}'", primary.connstr()));
    standby.touch("standby.signal");
    standby.start();
    assert_eq!(standby.psql("select pg_is_in_recovery()"), "t");

    primary.psql("create table t (x int); insert into t values (42)");
    standby.wait_until("row to replicate", Duration::from_secs(30), || {
        standby.try_psql("select x from t").as_deref() == Ok("42")
    });
    standby.promote();
    assert_eq!(standby.psql("select pg_is_in_recovery()"), "f");

    // A copy of a stopped data dir starts on its own port.
    standby.stop();
    let copy = PgCluster::from_data_dir(standby.data_dir());
    copy.start();
    assert_eq!(copy.psql("select x from t"), "42");
}

#[test]
fn walarchive_binary_is_copied_for_postgres() {
    let bin = walarchive_bin();
    assert!(bin.starts_with("/tmp"), "{}", bin.display());
    assert_eq!(bin, walarchive_bin(), "copied once per process");
    let meta = std::fs::metadata(&bin).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    let orig = std::fs::metadata(env!("CARGO_BIN_EXE_walarchive")).unwrap();
    assert_eq!(meta.len(), orig.len());
    let st = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(&bin)
        .status()
        .unwrap();
    assert!(st.success(), "postgres cannot execute {}", bin.display());
}

#[test]
fn free_ports_are_distinct() {
    let ports: std::collections::HashSet<u16> = (0..50).map(|_| free_port()).collect();
    assert_eq!(ports.len(), 50);
}

/// The proxy forwards both ways, holds each request back by its delay, and once dropped
/// closes what it still forwards and accepts nothing more.
#[test]
fn proxy_delays_requests_and_stops_on_drop() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    let target = echo_server();
    let delay = Duration::from_millis(150);
    let proxy = Proxy::start(target, delay);
    let port = proxy.port();
    assert_eq!(proxy.url(), format!("http://127.0.0.1:{port}"));
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for request in [&b"ping"[..], b"pong"] {
        std::thread::sleep(Duration::from_millis(20));
        let t = Instant::now();
        c.write_all(request).unwrap();
        let mut answer = [0u8; 4];
        c.read_exact(&mut answer).unwrap();
        assert_eq!(&answer[..], request);
        assert!(t.elapsed() >= delay, "answered in {:?}", t.elapsed());
    }
    drop(proxy);
    let mut rest = Vec::new();
    if let Err(e) = c.read_to_end(&mut rest) {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the connection stays open after the proxy is dropped"
        );
    }
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the proxy still accepts connections"
    );
}

#[test]
fn s3_bucket_and_signed_requests() {
    let s3 = s3();
    let env = s3.env();
    let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
            "AWS_ENDPOINT",
            "AWS_ALLOW_HTTP"
        ]
    );
    assert!(env.contains(&("AWS_ENDPOINT".into(), s3.endpoint())));

    let bucket = s3.fresh_bucket();
    assert_ne!(bucket, s3.fresh_bucket());
    if s3.kind == S3Kind::S3sFs {
        assert!(s3.root_dir().join(&bucket).is_dir());
    }
    // An unsigned request is answered (and refused) over plain HTTP.
    let r = http_request(s3.port, "GET", &format!("/{bucket}"), &[], b"").unwrap();
    if s3.kind == S3Kind::S3sFs {
        assert_eq!(r.status, 403, "{}", r.text());
    }

    s3.put_object(&bucket, "wal/000000010000000000000001", b"segment");
    s3.put_object(&bucket, "wal/with space+plus", b"x");
    s3.put_object(&bucket, "other/file", b"y");
    assert_eq!(
        s3.list_objects(&bucket, "wal/"),
        ["wal/000000010000000000000001", "wal/with space+plus"]
    );
    assert_eq!(
        s3.get_object(&bucket, "wal/000000010000000000000001")
            .as_deref(),
        Some(&b"segment"[..])
    );
    assert_eq!(
        s3.get_object(&bucket, "wal/with space+plus").as_deref(),
        Some(&b"x"[..])
    );
    s3.delete_object(&bucket, "other/file");
    assert_eq!(s3.get_object(&bucket, "other/file"), None);
    assert_eq!(s3.list_objects(&bucket, "").len(), 2);
}

#[test]
fn azurite_container_create_and_conflict() {
    let az = azurite();
    let env = az.env();
    let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "AZURE_STORAGE_USE_EMULATOR",
            "AZURITE_BLOB_STORAGE_URL",
            "AZURE_STORAGE_ACCOUNT_NAME",
            "AZURE_STORAGE_ACCOUNT_KEY"
        ]
    );

    let name = format!("smoke-{}", std::process::id());
    assert_eq!(az.try_create_container(&name), 201);
    assert_eq!(az.try_create_container(&name), 409);

    let c = az.fresh_container();
    az.put_blob(&c, "wal/000000010000000000000001", b"segment");
    az.put_blob(&c, "wal/with space+plus", b"x");
    az.put_blob(&c, "other/file", b"y");
    assert_eq!(
        az.list_blobs(&c, "wal/"),
        ["wal/000000010000000000000001", "wal/with space+plus"]
    );
    assert_eq!(
        az.get_blob(&c, "wal/with space+plus").as_deref(),
        Some(&b"x"[..])
    );
    az.delete_blob(&c, "other/file");
    assert_eq!(az.get_blob(&c, "other/file"), None);
    assert_eq!(az.list_blobs(&c, "").len(), 2);
}

#[test]
fn crypto_helpers_match_known_vectors() {
    // RFC 4231 test case 2.
    assert_eq!(
        hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    let t = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777);
    assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(amz_date(t), "19941106T084937Z");
}
