//! The archive/restore contract, driven through the real binary exactly as PostgreSQL calls
//! it: exit statuses, idempotent re-push, conflict refusal, foreign clusters, corrupted
//! objects, unreachable stores and every kind of bad input. Segments are real: a PostgreSQL
//! cluster writes them (see `WalSource`).

use testkit as common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;

/// Two independent clusters (different system identifiers), shared by the tests of this binary.
fn source() -> &'static WalSource {
    static S: OnceLock<WalSource> = OnceLock::new();
    S.get_or_init(|| WalSource::collect(6, 2000))
}

fn other_source() -> &'static WalSource {
    static S: OnceLock<WalSource> = OnceLock::new();
    S.get_or_init(|| WalSource::collect(6, 2000))
}

/// A fresh local-directory repository and a work directory with copies of WAL files.
struct Fixture {
    _dir: TestDir,
    repo_dir: PathBuf,
    work: PathBuf,
    url: String,
    env: Vec<(String, String)>,
}

impl Fixture {
    fn file() -> Fixture {
        let dir = TestDir::new("walarchive-contract-");
        let repo_dir = dir.join("repo");
        let work = dir.join("pg_wal");
        fs::create_dir_all(&work).unwrap();
        let url = format!("file://{}", repo_dir.display());
        Fixture {
            _dir: dir,
            repo_dir,
            work,
            url,
            env: quick_retries(),
        }
    }

    fn s3() -> Fixture {
        let mut f = Fixture::file();
        f.url = format!("s3://{}/some/prefix", s3().fresh_bucket());
        f.env.extend(s3().env());
        f
    }

    fn azure() -> Fixture {
        let mut f = Fixture::file();
        f.url = format!("az://{}/p", azurite().fresh_container());
        f.env.extend(azurite().env());
        f
    }

    /// Copies `name` from `src` into the work directory as `as_name`.
    fn stage(&self, src: &WalSource, name: &str, as_name: &str) -> PathBuf {
        let p = self.work.join(as_name);
        fs::copy(src.path(name), &p).unwrap();
        p
    }

    fn push(&self, path: &Path) -> std::process::Output {
        run_walarchive(
            &["--repo", &self.url, "wal-push", path.to_str().unwrap()],
            &self.env,
        )
    }

    fn fetch(&self, name: &str, dest: &Path) -> std::process::Output {
        run_walarchive(
            &[
                "--repo",
                &self.url,
                "wal-fetch",
                name,
                dest.to_str().unwrap(),
            ],
            &self.env,
        )
    }

    fn object(&self, name: &str) -> PathBuf {
        let parsed = &name[..24.min(name.len())];
        self.repo_dir
            .join(format!("wal/{}/{}/{name}", &parsed[..8], &parsed[8..16]))
    }
}

fn quick_retries() -> Vec<(String, String)> {
    vec![
        ("WALARCHIVE_RETRIES".into(), "2".into()),
        ("WALARCHIVE_REQUEST_TIMEOUT".into(), "5".into()),
    ]
}

fn round_trip(f: &Fixture) {
    let src = source();
    let name = &src.segments[1];
    let path = f.stage(src, name, name);
    assert_success(&f.push(&path));
    // Idempotent: the same content again succeeds and says so.
    let again = assert_success(&f.push(&path)).clone();
    assert!(
        stderr(&again).contains("already archived"),
        "{}",
        stderr(&again)
    );
    let dest = f.work.join("RECOVERYXLOG");
    assert_success(&f.fetch(name, &dest));
    assert_eq!(fs::read(&dest).unwrap(), src.bytes(name));
    // Conflict: same name, different content, refused and nothing overwritten.
    let mut changed = src.bytes(name);
    changed[500_000] ^= 0xFF;
    fs::write(&path, &changed).unwrap();
    let out = f.push(&path);
    let err = assert_conflict(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_success(&f.fetch(name, &dest));
    assert_eq!(
        fs::read(&dest).unwrap(),
        src.bytes(name),
        "stored object unchanged"
    );
    // Missing segment: exit 1, quietly (PostgreSQL probes).
    let out = f.fetch("0000000100000000000000FE", &dest);
    assert_code(&out, 1);
    assert_eq!(stderr(&out).trim(), "", "not found is not an error");
}

#[test]
fn round_trip_file() {
    round_trip(&Fixture::file());
}

#[test]
fn round_trip_s3() {
    round_trip(&Fixture::s3());
}

#[test]
fn round_trip_azure() {
    round_trip(&Fixture::azure());
}

/// A backup history file as PostgreSQL writes it, for a backup that started at offset 0x28
/// of (1 MiB) segment `seg` and stopped in the same segment.
fn backup_history(seg: &str) -> String {
    let segno = u64::from_str_radix(&seg[16..], 16).unwrap();
    let at = |offset: u64| {
        let lsn = (segno << 20) + offset;
        format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
    };
    format!(
        "START WAL LOCATION: {} (file {seg})\nSTOP WAL LOCATION: {} (file {seg})\n\
         CHECKPOINT LOCATION: {}\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
         START TIME: 2026-12-07 03:58:34 UTC\nLABEL: test\nSTART TIMELINE: 1\n\
         STOP TIME: 2026-12-07 03:58:35 UTC\nSTOP TIMELINE: 1\n",
        at(0x28),
        at(0x100),
        at(0x60)
    )
}

#[test]
fn history_backup_and_partial_files() {
    let f = Fixture::s3();
    let src = source();
    let seg = &src.segments[0];
    // A partial file is a whole segment under another name (the end of an old timeline).
    let partial = f.stage(src, seg, &format!("{seg}.partial"));
    let history = f.work.join("00000002.history");
    fs::write(
        &history,
        format!("1\t0/{:X}\tno recovery target specified\n", 0x0300_0000),
    )
    .unwrap();
    let backup = f.work.join(format!("{seg}.00000028.backup"));
    fs::write(&backup, backup_history(seg)).unwrap();
    // Files without WAL pages say nothing of their cluster: they are pushed for the data
    // directory of the cluster that wrote the segments (as archive_command runs in it).
    let pgdata = src.cluster.data_dir().to_str().unwrap();
    for p in [&partial, &history, &backup] {
        let path = p.to_str().unwrap();
        assert_success(&run_walarchive(
            &["--repo", &f.url, "wal-push", "--pgdata", pgdata, path],
            &f.env,
        ));
        let dest = f.work.join("restored");
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_success(&f.fetch(name, &dest));
        assert_eq!(fs::read(&dest).unwrap(), fs::read(p).unwrap(), "{name}");
    }
    let list = run_walarchive(&["--repo", &f.url, "wal-list", "--json"], &f.env);
    let entries: serde_json::Value = serde_json::from_slice(&assert_success(&list).stdout).unwrap();
    let kinds: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["backup", "partial", "history"], "{entries}");
    // Probing a history file that does not exist is a quiet 1.
    assert_code(&f.fetch("00000003.history", &f.work.join("x")), 1);
}

#[test]
fn foreign_cluster_is_refused() {
    let f = Fixture::file();
    let (a, b) = (source(), other_source());
    assert_ne!(a.system_identifier, b.system_identifier);
    assert_success(&f.push(&f.stage(a, &a.segments[0], &a.segments[0])));
    let name = &b.segments[2];
    let out = f.push(&f.stage(b, name, name));
    assert_code(&out, 5);
    let err = stderr(&out);
    assert!(
        err.contains("system identifier")
            && err.contains(&a.system_identifier)
            && err.contains(&b.system_identifier),
        "{err}"
    );
    assert_ne!(name, &a.segments[0]);
    assert!(
        !f.object(name).exists(),
        "nothing stored for the foreign segment"
    );
    let info = run_walarchive(&["--repo", &f.url, "repo-info", "--json"], &[]);
    let d: serde_json::Value = serde_json::from_slice(&assert_success(&info).stdout).unwrap();
    assert_eq!(d["system_identifier"], a.system_identifier.as_str());
    assert_eq!(d["wal_segment_size"], 1 << 20);
    assert_eq!(d["pg_version"], a.cluster.major());
}

/// WAL archived by a walarchive from before object format version 3 (SHA-256 of the
/// content) is restored and recognised on a re-push; WAL from a newer walarchive (a format
/// version this one does not know) is refused as such, never served.
#[test]
fn objects_of_other_format_versions() {
    use walarchive::format::{self, DigestKind};
    let f = Fixture::file();
    let src = source();
    let names = &src.segments[..2];
    for n in names {
        assert_success(&f.push(&f.stage(src, n, n)));
        let stored = fs::read(f.object(n)).unwrap();
        assert_eq!(&stored[8..10], &[3, 0], "{n} is stored as version 3");
    }
    let dest = f.work.join("RECOVERYXLOG");
    // Version 1, as older walarchives stored WAL (before objects were bound to their name).
    let old = &names[0];
    let v1 = format::encode_as(
        &src.bytes(old),
        walarchive::Compression::Zstd(1),
        DigestKind::Sha256,
        None,
    );
    fs::write(f.object(old), &v1.bytes).unwrap();
    assert_success(&f.fetch(old, &dest));
    assert_eq!(fs::read(&dest).unwrap(), src.bytes(old));
    fs::remove_file(&dest).unwrap();
    let again = f.push(&f.work.join(old));
    assert!(
        stderr(assert_success(&again)).contains("already archived"),
        "{}",
        stderr(&again)
    );
    // Different content under that name: a conflict naming BLAKE3 digests of both.
    let mut changed = src.bytes(old);
    changed[300_000] ^= 0xFF;
    fs::write(f.work.join(old), &changed).unwrap();
    assert_conflict(&f.push(&f.work.join(old)));
    assert_eq!(
        fs::read(f.object(old)).unwrap(),
        v1.bytes,
        "stored object unchanged"
    );
    // Version 4: too new for this walarchive.
    let new = &names[1];
    let mut v4 = fs::read(f.object(new)).unwrap();
    v4[8..10].copy_from_slice(&4u16.to_le_bytes());
    fs::write(f.object(new), &v4).unwrap();
    let out = f.fetch(new, &dest);
    assert_code(&out, 208);
    let line = error_line(&out);
    assert!(
        line.contains("object format version 4 is newer than this walarchive understands")
            && line.contains("upgrade walarchive"),
        "{line}"
    );
    assert!(!dest.exists(), "nothing written");
}

#[test]
fn corrupted_objects_are_fatal_for_fetch_and_leave_nothing() {
    let f = Fixture::file();
    let src = source();
    let names = &src.segments[..3];
    for n in names {
        assert_success(&f.push(&f.stage(src, n, n)));
    }
    // A flipped bit in the body, a truncated object, and an object replaced by garbage.
    let flip = f.object(&names[0]);
    let mut bytes = fs::read(&flip).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    fs::write(&flip, bytes).unwrap();
    let trunc = f.object(&names[1]);
    let bytes = fs::read(&trunc).unwrap();
    fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    fs::write(
        f.object(&names[2]),
        b"this is not a walarchive object, but long enough to have a header......",
    )
    .unwrap();
    for n in names {
        let dest = f.work.join("RECOVERYXLOG");
        let out = f.fetch(n, &dest);
        assert_code(&out, 208);
        assert!(stderr(&out).contains("corrupt"), "{}", stderr(&out));
        assert!(!dest.exists(), "no file left at the destination");
        let leftovers: Vec<_> = fs::read_dir(&f.work)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            // Segments, and the counters every call keeps in pg_wal; nothing else.
            leftovers.iter().all(|n| {
                let n = n.to_str().unwrap();
                n.len() == 24 || n.starts_with("walarchive-metrics.")
            }),
            "temp files left: {leftovers:?}"
        );
    }
    // A re-push onto a corrupt object does not claim success.
    assert_code(&f.push(&f.work.join(&names[0])), 8);
}

#[test]
fn corrupted_object_on_s3_is_fatal() {
    let f = Fixture::s3();
    let src = source();
    let n = &src.segments[0];
    assert_success(&f.push(&f.stage(src, n, n)));
    let bucket = f
        .url
        .trim_start_matches("s3://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let key = format!("some/prefix/wal/{}/{}/{n}", &n[..8], &n[8..16]);
    let mut obj = s3()
        .get_object(&bucket, &key)
        .expect("object stored under the documented key");
    let at = obj.len() / 2;
    obj[at] ^= 0x40;
    s3().put_object(&bucket, &key, &obj);
    let dest = f.work.join("RECOVERYXLOG");
    assert_code(&f.fetch(n, &dest), 208);
    assert!(!dest.exists());
}

#[test]
fn unreachable_store() {
    let src = source();
    let mut f = Fixture::file();
    let port = free_port(); // nothing listens there
    f.url = "s3://bucket/prefix".into();
    f.env.extend([
        ("AWS_ACCESS_KEY_ID".to_string(), "x".to_string()),
        ("AWS_SECRET_ACCESS_KEY".into(), "y".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ENDPOINT".into(), format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
    ]);
    let n = &src.segments[0];
    let out = f.push(&f.stage(src, n, n));
    assert_code(&out, 7);
    assert!(
        stderr(&out).contains("gave up after 2 attempts"),
        "{}",
        stderr(&out)
    );
    let dest = f.work.join("RECOVERYXLOG");
    let out = f.fetch(n, &dest);
    assert!(
        code(&out) > 125,
        "a storage outage must abort recovery, got {}",
        code(&out)
    );
    assert_code(&out, 207);
    assert!(!dest.exists());
}

/// On a standby (standby.signal in the data directory PostgreSQL runs restore_command in,
/// or in `--pgdata`), a storage failure answers "not available" (1) with an error line, so
/// that PostgreSQL keeps waiting; archive recovery (recovery.signal) and a plain directory
/// keep 207; a corrupt object and a missing repository stay fatal on a standby too.
#[test]
fn a_standby_waits_out_storage_failures_only() {
    let src = source();
    let n = &src.segments[0];
    let mut down = Fixture::file();
    down.url = "s3://bucket/prefix".into();
    down.env.extend([
        ("AWS_ACCESS_KEY_ID".to_string(), "x".to_string()),
        ("AWS_SECRET_ACCESS_KEY".into(), "y".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        (
            "AWS_ENDPOINT".into(),
            format!("http://127.0.0.1:{}", free_port()),
        ),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
    ]);
    // The data directory is pg_wal's parent (as PostgreSQL's %p, pg_wal/RECOVERYXLOG, says).
    let data = down.work.parent().unwrap().to_path_buf();
    let dest = down.work.join("RECOVERYXLOG");
    let fetch_in = |f: &Fixture, extra: &[&str]| {
        let mut a = vec![
            "--repo",
            f.url.as_str(),
            "wal-fetch",
            n,
            "pg_wal/RECOVERYXLOG",
        ];
        a.extend_from_slice(extra);
        walarchive_cmd()
            .args(&a)
            .envs(f.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&data)
            .output()
            .unwrap()
    };
    assert_code(&fetch_in(&down, &[]), 207);
    fs::write(data.join("recovery.signal"), b"").unwrap();
    assert_code(&fetch_in(&down, &[]), 207);
    fs::write(data.join("standby.signal"), b"").unwrap();
    let out = fetch_in(&down, &[]);
    assert_code(&out, 1);
    let line = error_line(&out);
    assert!(
        line.contains("this is a standby (standby.signal)")
            && line.contains("gave up after 2 attempts"),
        "{line}"
    );
    assert!(!dest.exists());
    let counters: serde_json::Value =
        serde_json::from_slice(&fs::read(down.work.join("walarchive-metrics.json")).unwrap())
            .unwrap();
    assert_eq!(counters["fetch_standby_waits_total"], 1, "{counters}");
    assert_eq!(counters["fetch_errors_total"], 3, "{counters}");
    // --pgdata names the data directory when %p says nothing about it.
    let elsewhere = data.join("elsewhere");
    let out = run_walarchive(
        &[
            "--repo",
            &down.url,
            "wal-fetch",
            n,
            elsewhere.to_str().unwrap(),
        ],
        &down.env,
    );
    assert_code(&out, 207);
    let out = run_walarchive(
        &[
            "--repo",
            &down.url,
            "wal-fetch",
            n,
            elsewhere.to_str().unwrap(),
            "--pgdata",
            data.to_str().unwrap(),
        ],
        &down.env,
    );
    assert_code(&out, 1);

    // A corrupt object never gets better by waiting: fatal on a standby too.
    let mut f = Fixture::file();
    f.work = down.work.clone();
    f.repo_dir = down.work.join("repo");
    f.url = format!("file://{}", f.repo_dir.display());
    assert_success(&f.push(&f.stage(src, n, n)));
    let obj = f.object(n);
    let mut bytes = fs::read(&obj).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    fs::write(&obj, bytes).unwrap();
    assert_code(&fetch_in(&f, &[]), 208);
    // Nor does a URL with no repository behind it.
    f.url = format!("file://{}", down.work.join("no-repo-here").display());
    assert_code(&fetch_in(&f, &[]), 206);
}

/// A standby promoted during an outage probes `N.history` for a free timeline: during an
/// outage a history file answers 1 only when the store itself said earlier that it has no
/// such file (recorded in pg_wal/.walarchive/absent-history, dropped once the file is
/// found); without that record, 207 and a line saying why. Segments keep waiting (1).
#[test]
fn a_standby_in_an_outage_never_guesses_that_a_timeline_is_free() {
    let src = source();
    let n = &src.segments[0];
    let f = Fixture::file();
    assert_success(&f.push(&f.stage(src, n, n)));
    let data = f.work.parent().unwrap().to_path_buf();
    fs::write(data.join("standby.signal"), b"").unwrap();
    let record = data.join("pg_wal/.walarchive/absent-history");
    let fetch = |faults: &str, name: &str| {
        walarchive_cmd()
            .args(["--repo", &f.url, "wal-fetch", name, "pg_wal/RECOVERYXLOG"])
            .envs(f.env.iter().map(|(k, v)| (k, v)))
            .env("WALARCHIVE_FAULTS", faults)
            .current_dir(&data)
            .output()
            .unwrap()
    };
    let outage = "op=get fault=503";
    // The store answers: 00000002.history is not there (a quiet 1), and that is recorded.
    assert_code(&fetch("", "00000002.history"), 1);
    assert_eq!(fs::read_to_string(&record).unwrap(), "00000002.history\n");
    // In an outage: the recorded name waits, like a segment...
    let out = fetch(outage, "00000002.history");
    assert_code(&out, 1);
    assert!(
        error_line(&out).contains("this is a standby (standby.signal)"),
        "{}",
        stderr(&out)
    );
    assert_code(&fetch(outage, "000000010000000000000063"), 1);
    // ...one never seen missing is not guessed absent.
    let out = fetch(outage, "00000003.history");
    assert_code(&out, 207);
    let line = error_line(&out);
    assert!(
        line.contains("there is no record that it lacks 00000003.history")
            && line.contains("refuses to guess")
            && line.contains("gave up after 2 attempts"),
        "{line}"
    );
    assert!(!f.work.join("RECOVERYXLOG").exists());
    let counters: serde_json::Value =
        serde_json::from_slice(&fs::read(f.work.join("walarchive-metrics.json")).unwrap()).unwrap();
    assert_eq!(counters["fetch_standby_waits_total"], 2, "{counters}");
    // 00000002.history appears (another server promoted): found, and no longer recorded, so
    // the next outage does not take it for absent.
    let history = f.work.join("00000002.history");
    fs::write(&history, "1\t0/3000000\tno recovery target specified\n").unwrap();
    let pgdata = src.cluster.data_dir().to_str().unwrap();
    assert_success(&run_walarchive(
        &[
            "--repo",
            &f.url,
            "wal-push",
            "--pgdata",
            pgdata,
            history.to_str().unwrap(),
        ],
        &f.env,
    ));
    assert_success(&fetch("", "00000002.history"));
    assert_eq!(fs::read_to_string(&record).unwrap(), "");
    assert_code(&fetch(outage, "00000002.history"), 207);
}

#[test]
fn wrong_credentials_and_missing_bucket() {
    let src = source();
    let n = &src.segments[0];
    let mut f = Fixture::s3();
    let secret = "definitely-wrong-secret-value";
    for (k, v) in f.env.iter_mut() {
        if k == "AWS_SECRET_ACCESS_KEY" {
            *v = secret.into();
        }
    }
    let path = f.stage(src, n, n);
    for args in [vec![], vec!["-vv"]] {
        let mut a: Vec<&str> = args.clone();
        a.extend(["--repo", &f.url, "wal-push", path.to_str().unwrap()]);
        let out = run_walarchive(&a, &f.env);
        assert_code(&out, 7);
        assert!(stderr(&out).contains("access denied"), "{}", stderr(&out));
        assert!(
            !stderr(&out).contains(secret),
            "the secret leaked: {}",
            stderr(&out)
        );
    }
    assert_code(&f.fetch(n, &f.work.join("x")), 207);

    // A missing bucket (s3s-fs creates buckets on PUT, so the push side is proven on Azurite,
    // which, like real S3 and Azure, refuses writes to a missing container).
    let mut f = Fixture::s3();
    f.url = "s3://no-such-bucket-here/p".into();
    // A fetch from a missing bucket is not "not found": that would end a recovery.
    assert_code(&f.fetch(n, &f.work.join("x")), 206);
    let mut f = Fixture::azure();
    f.url = "az://no-such-container/p".into();
    let out = f.push(&f.stage(src, n, n));
    assert_code(&out, 7);
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert_code(&f.fetch(n, &f.work.join("x")), 206);
}

#[test]
fn bad_input() {
    let f = Fixture::file();
    let src = source();
    let n = &src.segments[0];
    let one_line = |out: &std::process::Output, needle: &str| {
        let err = stderr(out);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "expected {needle:?} in {err}");
    };
    // Missing file, a directory, not a WAL name, empty, truncated.
    let out = f.push(&f.work.join("000000010000000000000099"));
    assert_code(&out, 3);
    one_line(&out, "no such file");
    let dir = f.work.join("000000010000000000000098");
    fs::create_dir(&dir).unwrap();
    one_line(assert_code(&f.push(&dir), 3), "directory");
    let odd = f.stage(src, n, "RECOVERYXLOG");
    one_line(assert_code(&f.push(&odd), 3), "not a WAL file name");
    let empty = f.work.join("000000010000000000000097");
    fs::write(&empty, b"").unwrap();
    one_line(assert_code(&f.push(&empty), 3), "empty");
    let short = f.work.join(n);
    fs::write(&short, &src.bytes(n)[..700_000]).unwrap();
    one_line(assert_code(&f.push(&short), 3), "not a whole WAL segment");
    let renamed = f.stage(src, n, "000000010000000000000096");
    one_line(assert_code(&f.push(&renamed), 3), "renamed or damaged");
    let zeros = f.work.join("000000010000000000000095");
    fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
    one_line(
        assert_code(&f.push(&zeros), 3),
        "not a PostgreSQL WAL segment",
    );
    assert!(!f.repo_dir.join("wal").exists(), "nothing was stored");
    // Bad names for wal-fetch abort recovery rather than end it.
    assert_code(&f.fetch("../../etc/passwd", &f.work.join("x")), 203);
    // Configuration.
    let path = f.stage(src, n, n);
    let p = path.to_str().unwrap();
    one_line(
        assert_code(
            &run_walarchive(&["--repo", "ftp://host/x", "wal-push", p], &[]),
            6,
        ),
        "unsupported repository URL scheme",
    );
    one_line(
        assert_code(&run_walarchive(&["wal-push", p], &[]), 6),
        "no repository configured",
    );
    one_line(
        assert_code(
            &run_walarchive(
                &["--repo", &f.url, "--compression", "gzip", "wal-push", p],
                &[],
            ),
            6,
        ),
        "unknown compression",
    );
    assert_code(
        &run_walarchive(&["--repo", &f.url, "wal-fetch", n], &[]),
        202,
    );
    assert_code(&run_walarchive(&["--repo", &f.url, "wal-push"], &[]), 2);
    let missing_cfg = f.work.join("nope.toml");
    one_line(
        assert_code(
            &run_walarchive(
                &["--config", missing_cfg.to_str().unwrap(), "wal-push", p],
                &[],
            ),
            6,
        ),
        "cannot read configuration file",
    );
}

#[test]
fn settings_precedence_and_codecs() {
    let src = source();
    let f = Fixture::file();
    let base = f.repo_dir.parent().unwrap().to_path_buf();
    let url_of = |n: &str| format!("file://{}", base.join(n).display());
    let cfg = base.join("walarchive.toml");
    fs::write(
        &cfg,
        format!(
            "repo = \"{}\"\ncompression = \"lz4\"\n[retry]\nattempts = 2\n",
            url_of("from-file")
        ),
    )
    .unwrap();
    let seg = &src.segments[0];
    let path = f.stage(src, seg, seg);
    let p = path.to_str().unwrap();
    let c = cfg.to_str().unwrap();
    let env = |repo: Option<&str>| {
        let mut e = vec![("WALARCHIVE_CONFIG".to_string(), c.to_string())];
        if let Some(r) = repo {
            e.push(("WALARCHIVE_REPO".to_string(), r.to_string()));
        }
        e
    };
    assert_success(&run_walarchive(&["wal-push", p], &env(None)));
    assert_success(&run_walarchive(
        &["wal-push", p],
        &env(Some(&url_of("from-env"))),
    ));
    assert_success(&run_walarchive(
        &["--repo", &url_of("from-flag"), "wal-push", p],
        &env(Some(&url_of("from-env"))),
    ));
    for repo in ["from-file", "from-env", "from-flag"] {
        let obj = base.join(repo).join(format!("wal/00000001/00000000/{seg}"));
        let bytes = fs::read(&obj).unwrap_or_else(|e| panic!("{}: {e}", obj.display()));
        assert_eq!(bytes[10], 1, "the config file's lz4 applies to {repo}");
    }
    // Every codec reads back, whatever the reader's own setting.
    for (i, codec) in ["none", "lz4", "zstd", "zstd:9"].iter().enumerate() {
        let name = &src.segments[i + 1];
        let path = f.stage(src, name, name);
        assert_success(&run_walarchive(
            &[
                "--repo",
                &f.url,
                "--compression",
                codec,
                "wal-push",
                path.to_str().unwrap(),
            ],
            &[],
        ));
        let dest = f.work.join("out");
        assert_success(&run_walarchive(
            &[
                "--repo",
                &f.url,
                "--compression",
                "none",
                "wal-fetch",
                name,
                dest.to_str().unwrap(),
            ],
            &[],
        ));
        assert_eq!(fs::read(&dest).unwrap(), src.bytes(name), "{codec}");
    }
}

/// A small tmpfs, unmounted on drop: a disk that fills up.
struct SmallDisk {
    dir: TestDir,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = TestDir::new("walarchive-full-");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert_success(&out);
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn full_disk() {
    let src = source();
    let n = &src.segments[2];
    // Restoring onto a full pg_wal: fatal for recovery, nothing left behind.
    let f = Fixture::file();
    assert_success(&f.push(&f.stage(src, n, n)));
    let disk = SmallDisk::new("256k");
    let dest = disk.dir.join("RECOVERYXLOG");
    let out = f.fetch(n, &dest);
    assert_code(&out, 209);
    assert!(
        stderr(&out).contains("No space left on device"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        fs::read_dir(disk.dir.path()).unwrap().count(),
        0,
        "nothing left on the full disk"
    );
    // Archiving into a full local repository: not acknowledged, nothing visible as valid.
    let mut f = Fixture::file();
    f.url = format!("file://{}/repo", disk.dir.path().display());
    // Uncompressed, the 1 MiB segment cannot fit on the 256 KiB disk.
    f.env.push(("WALARCHIVE_COMPRESSION".into(), "none".into()));
    let out = f.push(&f.stage(src, n, n));
    assert_code(&out, 7);
    assert!(
        stderr(&out).contains("No space left on device"),
        "{}",
        stderr(&out)
    );
    let repo_dir = disk.dir.join("repo");
    let obj = repo_dir.join(format!("wal/{}/{}/{n}", &n[..8], &n[8..16]));
    assert!(!obj.exists(), "a half-written object is visible");
    // The repository (its small descriptor fitted) positively lacks the segment.
    assert_code(&f.fetch(n, &f.work.join("x")), 1);
}
