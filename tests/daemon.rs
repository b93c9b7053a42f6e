//! The resident archiver (`walarchive daemon`, and `wal-push --daemon` as its thin client),
//! end to end: a real primary with 1 MiB segments archives bursts of WAL through a daemon
//! that `wal-push` starts itself, into a local directory and into S3, each segment exactly
//! once and intact; killing the daemon and its clients at random loses nothing; the daemon
//! stops with PostgreSQL; and in a fake data directory, every refusal `wal-push` makes
//! alone (bad file, conflict, foreign cluster) comes back through the daemon with the same
//! exit status, and a file changed after the daemon pushed it is never acknowledged from
//! the daemon's record.

use testkit as common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::bursts::*;
use common::*;

fn archive_command(repo: &Repo) -> String {
    format!(
        "{} --repo {} --daemon wal-push %p",
        walarchive_bin().display(),
        repo.url
    )
}

/// PIDs of this test binary's walarchive processes whose working directory is `data`, with
/// `daemon` telling whether they are daemons (started by wal-push) or wal-push calls.
fn walarchive_pids(data: &Path, daemon: bool) -> Vec<u32> {
    let bin = walarchive_bin().display().to_string();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.first() != Some(&bin.as_bytes()) {
            continue;
        }
        if !fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd == data) {
            continue;
        }
        let environ = fs::read(entry.path().join("environ")).unwrap_or_default();
        let is_daemon = environ
            .split(|b| *b == 0)
            .any(|v| v.starts_with(b"WALARCHIVE_DAEMON_FOR="));
        if is_daemon == daemon {
            pids.push(pid);
        }
    }
    pids
}

/// A burst archived through a daemon `wal-push` starts: every segment once, intact, no
/// failure, nearly every call answered by the daemon; the daemon stops with PostgreSQL.
fn burst(store: Store) {
    let started = Instant::now();
    let repo = store.fresh();
    let pg = primary_with(&repo, &archive_command(&repo));
    let first_lsn = pg.psql("select pg_current_wal_lsn()");
    // The first call starts the daemon.
    let warm = pg.switch_wal();
    pg.wait_archived(&warm, Duration::from_secs(60));
    wait_until("the daemon to run", Duration::from_secs(10), || {
        !walarchive_pids(pg.data_dir(), true).is_empty()
    });
    let Burst {
        done,
        in_burst,
        burst_time,
        log,
        times,
    } = archive_burst(&repo, &pg, &first_lsn);

    let answered = log.matches("was archived by the walarchive daemon").count();
    let m = counters(&pg);
    eprintln!(
        "{store:?}: {} segments ({in_burst} from the burst, written in {burst_time:.1?}); \
         {answered} calls answered by the daemon; counters {m}; test took {:.1?}",
        done.len(),
        started.elapsed()
    );
    assert!(
        answered + 3 >= in_burst,
        "only {answered} of {in_burst} calls were answered by the daemon"
    );
    let total: usize = times.values().sum();
    assert_eq!(m["push_total"], total as u64, "{m}");
    assert_eq!(m["push_errors_total"], 0, "{m}");

    // The daemon stops with PostgreSQL, and removes its socket.
    assert_eq!(walarchive_pids(pg.data_dir(), true).len(), 1);
    pg.stop();
    wait_until("the daemon to stop", Duration::from_secs(10), || {
        walarchive_pids(pg.data_dir(), true).is_empty()
    });
    assert!(!pg.wal_dir().join("walarchive-daemon.sock").exists());
}

#[test]
fn burst_file() {
    burst(Store::File);
}

#[test]
fn burst_s3() {
    burst(Store::S3);
}

/// Killing the daemon and the `wal-push` calls (`kill -9`) at random points during bursts
/// loses nothing: clients fall back to pushing themselves, the next call starts a new
/// daemon, PostgreSQL retries, and every segment ends up stored and intact.
#[test]
fn killed_at_random_points_loses_nothing() {
    let repo = Store::File.fresh();
    // See push_ahead.rs: the shell turns a killed wal-push into status 1, which PostgreSQL
    // retries after a second instead of restarting its archiver 10 s later.
    let command = format!("{} || exit 1", archive_command(&repo));
    let pg = Arc::new(primary_with(&repo, &command));
    let first = pg.psql("select pg_walfile_name(pg_current_wal_lsn())");
    let (writer, writing) = write_bursts(&pg);
    let mut random = kill_schedule();
    // Keyed by PID and kind: a daemon seen between its fork and its exec still looks like
    // the wal-push that starts it, and must get a daemon's fate once it is one.
    let mut fate: BTreeMap<(u32, bool), Option<Instant>> = BTreeMap::new();
    let (mut daemon_kills, mut client_kills) = (0, 0);
    let until = Instant::now() + Duration::from_secs(12);
    while writing.load(Ordering::SeqCst) || Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
        for daemon in [true, false] {
            let pids = walarchive_pids(pg.data_dir(), daemon);
            for pid in pids {
                let when = *fate.entry((pid, daemon)).or_insert_with(|| {
                    // Daemons live up to a second; a third of the clients die.
                    let spared = !daemon && random(3) != 0;
                    (!spared).then(|| {
                        Instant::now()
                            + Duration::from_millis(random(if daemon { 1000 } else { 300 }))
                    })
                });
                if when.is_some_and(|t| Instant::now() >= t) {
                    if kill9(pid) {
                        if daemon {
                            daemon_kills += 1;
                        } else {
                            client_kills += 1;
                        }
                    }
                    fate.insert((pid, daemon), None);
                }
            }
        }
    }
    let (last, status, log) = catch_up(writer, &pg);
    eprintln!(
        "{daemon_kills} daemons and {client_kills} wal-push calls killed; {} calls answered by a daemon; pg_stat_archiver: {status}",
        log.matches("was archived by the walarchive daemon").count()
    );
    assert!(
        daemon_kills >= 2,
        "only {daemon_kills} daemons killed: the test proved little"
    );

    assert_all_archived(&repo, &pg, &first, &last);
}

// ---------------------------------------------------------------------------
// Contract: a fake data directory, a daemon started by hand, wal-push as its client
// ---------------------------------------------------------------------------

fn real_segments() -> &'static WalSource {
    static S: OnceLock<WalSource> = OnceLock::new();
    S.get_or_init(|| WalSource::collect(6, 1000))
}

/// What these tests do with the harness's fake data directory.
trait DaemonData {
    fn new() -> Self;
    fn daemon(&self) -> Daemon;
    fn push(&self, name: &str) -> Output;
}

impl DaemonData for FakeData {
    /// Four real segments in pg_wal (not `.ready`: each test decides), no `postmaster.pid`
    /// (the daemon needs none when started by hand), and a fresh repository.
    fn new() -> FakeData {
        FakeData::with_segments("dmdata", real_segments(), 4, false)
    }

    /// `walarchive daemon` for this data directory, running until killed.
    fn daemon(&self) -> Daemon {
        let child = walarchive_cmd()
            .args(["--repo", &self.url, "daemon", "--pgdata"])
            .arg(self.data())
            .current_dir(self.data())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let socket = self.wal("walarchive-daemon.sock");
        wait_until("the daemon's socket", Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        Daemon(Some(child))
    }

    fn push(&self, name: &str) -> Output {
        walarchive_cmd()
            .args(["--repo", &self.url, "wal-push", &format!("pg_wal/{name}")])
            .current_dir(self.data())
            .env("WALARCHIVE_RETRIES", "2")
            .output()
            .unwrap()
    }
}

struct Daemon(Option<Child>);

impl Daemon {
    /// Kills it; returns what it logged.
    fn stop(mut self) -> String {
        let mut child = self.0.take().unwrap();
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a segment's object holds, decoded by `wal-fetch`.
fn fetched(d: &FakeData, name: &str) -> Vec<u8> {
    let dest = d.dir.join(format!("fetched-{name}"));
    let out = walarchive_cmd()
        .args(["--repo", &d.url, "wal-fetch", name])
        .arg(&dest)
        .output()
        .unwrap();
    assert_success(&out);
    fs::read(dest).unwrap()
}

#[test]
fn daemon_pushes_ready_segments_and_answers_its_clients() {
    let d = FakeData::new();
    let daemon = d.daemon();
    // Segments made ready are pushed without anyone asking.
    for n in &d.names[..3] {
        d.ready(n);
    }
    let repo_seg = |n: &str| {
        d.dir
            .join(format!("repo/wal/{}/{}/{n}", &n[..8], &n[8..16]))
    };
    wait_until(
        "the daemon to push the ready segments",
        Duration::from_secs(30),
        || d.names[..3].iter().all(|n| repo_seg(n).exists()),
    );
    // PostgreSQL's calls are answered from the daemon's record, quickly and correctly.
    for n in &d.names[..3] {
        let out = d.push(n);
        assert_success(&out);
        assert!(
            stderr(&out).contains("was archived by the walarchive daemon"),
            "{}",
            stderr(&out)
        );
        assert_eq!(fetched(&d, n), fs::read(d.wal(n)).unwrap());
    }
    // A segment nobody made ready is pushed for the request itself.
    let n = &d.names[3];
    let out = d.push(n);
    assert_success(&out);
    assert!(
        stderr(&out).contains("through the walarchive daemon"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fetched(&d, n), fs::read(d.wal(n)).unwrap());
    // A second daemon for the same directory refuses to start (status 4).
    let second = walarchive_cmd()
        .args(["--repo", &d.url, "daemon", "--pgdata"])
        .arg(d.data())
        .output()
        .unwrap();
    assert_code(&second, 4);
    assert!(
        error_line(&second).contains("already serves"),
        "{}",
        stderr(&second)
    );
    // Counters: the daemon counts its uploads, the clients what it answered.
    let m: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.wal("walarchive-metrics.json")).unwrap())
            .unwrap();
    assert_eq!(m["push_total"], 4, "{m}");
    assert_eq!(m["push_already_archived_total"], 3, "{m}");
    let log = daemon.stop();
    assert!(log.contains("walarchive daemon serving"), "{log}");
}

#[test]
fn refusals_come_back_with_the_same_status_through_the_daemon() {
    let d = FakeData::new();
    let _daemon = d.daemon();
    let (a, b) = (&d.names[0], &d.names[1]);
    // Not a whole segment: bad input (3), the same message as without a daemon.
    let truncated = d.wal("000000010000000000000099");
    fs::write(&truncated, &fs::read(d.wal(a)).unwrap()[..1000]).unwrap();
    let out = d.push("000000010000000000000099");
    assert_code(&out, 3);
    assert!(
        error_line(&out).contains("not a whole WAL segment"),
        "{}",
        stderr(&out)
    );
    // No such file: bad input.
    assert_code(&d.push("000000010000000000000098"), 3);
    // Stored once; the same name with other content is a conflict (4).
    assert_success(&d.push(a));
    let mut other = fs::read(d.wal(b)).unwrap();
    let own = fs::read(d.wal(a)).unwrap();
    other[..64].copy_from_slice(&own[..64]);
    fs::write(d.wal(a), &other).unwrap();
    let out = d.push(a);
    assert_code(&out, 4);
    assert!(
        error_line(&out).contains("different content"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fetched(&d, a), own, "the stored segment is untouched");
}

#[test]
fn a_file_changed_after_the_daemon_pushed_it_is_never_acknowledged_from_its_record() {
    let d = FakeData::new();
    let _daemon = d.daemon();
    let (a, b) = (&d.names[0], &d.names[1]);
    d.ready(a);
    let stored = fs::read(d.wal(a)).unwrap();
    let marker = d.wal(&format!("walarchive-pushed/{a}"));
    wait_until("the daemon to push it", Duration::from_secs(30), || {
        marker.exists()
    });
    // Replaced (as a restore into the same directory could), same size and name: the
    // daemon must look again, find another content, and refuse it.
    let mut other = fs::read(d.wal(b)).unwrap();
    other[..64].copy_from_slice(&stored[..64]);
    let tmp = d.wal("replacement.tmp");
    fs::write(&tmp, &other).unwrap();
    fs::rename(&tmp, d.wal(a)).unwrap();
    let out = d.push(a);
    assert_code(&out, 4);
    assert_eq!(fetched(&d, a), stored);
}

#[test]
fn without_a_daemon_wal_push_pushes_itself_and_a_dead_daemons_socket_is_harmless() {
    let d = FakeData::new();
    let a = &d.names[0];
    // A socket file nobody listens on (a daemon killed with -9 leaves one).
    let _ = std::os::unix::net::UnixListener::bind(d.wal("walarchive-daemon.sock")).unwrap();
    let out = d.push(a);
    assert_success(&out);
    assert!(!stderr(&out).contains("daemon"), "{}", stderr(&out));
    assert_eq!(fetched(&d, a), fs::read(d.wal(a)).unwrap());
}

/// A daemon started with other settings (here another repository: the configuration
/// changed since it started) never archives for a client: the client pushes into its own
/// repository, and the daemon stops so that the next call can start a current one.
#[test]
fn a_daemon_with_other_settings_is_not_used_and_stops() {
    let d = FakeData::new();
    let daemon = d.daemon();
    let a = &d.names[0];
    let other = format!("file://{}", d.dir.join("other-repo").display());
    let out = walarchive_cmd()
        .args(["--repo", &other, "wal-push", &format!("pg_wal/{a}")])
        .current_dir(d.data())
        .output()
        .unwrap();
    assert_success(&out);
    assert!(stderr(&out).contains("other settings"), "{}", stderr(&out));
    let in_other = d
        .dir
        .join(format!("other-repo/wal/{}/{}/{a}", &a[..8], &a[8..16]));
    assert!(
        in_other.exists(),
        "not archived into the client's repository"
    );
    assert!(
        !d.dir.join("repo/wal").exists(),
        "the old daemon archived into its own repository"
    );
    let mut daemon = daemon;
    let child = daemon.0.as_mut().unwrap();
    wait_until("the stale daemon to stop", Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    assert!(!d.wal("walarchive-daemon.sock").exists());
}

/// A data directory whose path is too long for a socket beside its pg_wal (150+
/// characters): wal-push without a daemon says nothing about one (it used to warn "socket
/// path too long" on every call); `--daemon` starts one, listening in the user's private
/// runtime directory, which answers that call and the next ones.
#[test]
fn a_long_data_directory_path_still_gets_a_daemon() {
    let src = real_segments();
    let dir = TestDir::new("walarchive-dmlong-");
    let mut data = dir.path().to_path_buf();
    for i in 0..3 {
        data.push(format!("a-directory-name-long-enough-to-matter-{i}"));
    }
    data.push("data");
    assert!(data.as_os_str().len() >= 150, "{}", data.display());
    fs::create_dir_all(data.join("pg_wal/archive_status")).unwrap();
    let names = &src.segments[..3];
    for n in names {
        fs::copy(src.path(n), data.join("pg_wal").join(n)).unwrap();
    }
    let url = format!("file://{}", dir.join("repo").display());
    // stderr goes to a file, as PostgreSQL's log: a daemon started by the call inherits it,
    // and a pipe would stay open until the daemon exits.
    let log = dir.join("push.log");
    let push = |name: &str, extra: &[&str]| {
        let status = walarchive_cmd()
            .args(["--repo", &url])
            .args(extra)
            .args(["wal-push", &format!("pg_wal/{name}")])
            .current_dir(&data)
            .env("WALARCHIVE_RETRIES", "2")
            .stderr(fs::File::create(&log).unwrap())
            .status()
            .unwrap();
        Output {
            status,
            stdout: Vec::new(),
            stderr: fs::read(&log).unwrap(),
        }
    };

    // No daemon asked for, none running: not a word about one.
    let out = push(&names[0], &[]);
    assert_success(&out);
    assert!(!stderr(&out).contains("daemon"), "{}", stderr(&out));

    // --daemon: one is started (it follows postmaster.pid) and answers.
    fs::write(data.join("postmaster.pid"), "1\n").unwrap();
    let out = push(&names[1], &["--daemon"]);
    assert_success(&out);
    let err = stderr(&out);
    assert!(
        err.contains("started a walarchive daemon")
            && err.contains("through the walarchive daemon")
            && !err.contains("did not answer"),
        "{err}"
    );
    let socket = walarchive::daemon::socket_path(&data.join("pg_wal")).unwrap();
    assert!(socket.as_os_str().len() <= 103, "{}", socket.display());
    assert!(!data.join("pg_wal/walarchive-daemon.sock").exists());
    let runtime = socket.parent().unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = fs::metadata(runtime).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o700,
        "{}",
        runtime.display()
    );
    assert_eq!(meta.uid(), fs::metadata("/proc/self").unwrap().uid());
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());

    // The next call, without --daemon, is answered by the running daemon.
    let out = push(&names[2], &[]);
    assert_success(&out);
    assert!(
        stderr(&out).contains("through the walarchive daemon"),
        "{}",
        stderr(&out)
    );

    // The daemon stops with "PostgreSQL", taking its socket with it.
    fs::remove_file(data.join("postmaster.pid")).unwrap();
    wait_until("the daemon to stop", Duration::from_secs(20), || {
        !socket.exists()
    });
    let d = FakeData {
        dir,
        url: url.clone(),
        names: names.to_vec(),
    };
    for n in names {
        assert_eq!(fetched(&d, n), src.bytes(n), "{n}");
    }
}
