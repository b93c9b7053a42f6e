//! Shared harness for walarchive's integration tests and benches
//! (`mod common;` in each test/bench file).
//!
//! # Why it looks like this
//!
//! * **Real servers, no mocks.** walarchive talks to PostgreSQL (as its
//!   `archive_command` / `restore_command`, and over the wire) and to object
//!   stores through the `object_store` crate. The tests run the real things:
//!   PostgreSQL 15 from `/usr/lib/postgresql/15/bin`, `s3s-fs` (or `moto_server`
//!   with `WALARCHIVE_TEST_S3=moto`) for S3, and `azurite-blob` for Azure Blob.
//!   `scripts/setup` installs whatever is missing.
//! * **PostgreSQL refuses to run as root.** `initdb`, `pg_ctl`, `pg_basebackup`
//!   and `postgres` run as the `postgres` OS user through
//!   `runuser -u postgres -- env K=V ... <program>`. Every directory PostgreSQL
//!   touches is a fresh temp dir under `/tmp` owned by `postgres`, and the
//!   walarchive binary that PostgreSQL executes is a copy under `/tmp` (mode
//!   0755), because `target/` may sit under `/root`, which postgres cannot
//!   traverse. `runuser -u` (without `-l`) keeps the caller's environment
//!   except HOME, SHELL, USER and LOGNAME; the harness still passes the
//!   requested variables explicitly through `env`, so they reach the postmaster
//!   and thus every `archive_command` / `restore_command` it spawns.
//!   `psql`/`pgbench` need no `runuser`: they connect over TCP to 127.0.0.1
//!   with `trust` auth.
//! * **One object-store server per test process.** [`s3()`] and [`azurite()`]
//!   start their server lazily, once, in a `OnceLock`; the tests of one test
//!   binary run as threads and share it, each using its own bucket/container
//!   ([`S3Server::fresh_bucket`], [`Azurite::fresh_container`]). Use
//!   `cargo test` (threads), not nextest (one process per test would start one
//!   server per test).
//! * **Watchdogs instead of destructors.** Statics are never dropped, and a
//!   killed test process runs no destructors at all. So each server is spawned
//!   through `sh -c` with a loop that kills it once the test process's PID is
//!   gone; every PostgreSQL cluster gets a similar watchdog that stops it
//!   (`pg_ctl stop -m immediate`) and removes its directory; the per-process
//!   directory (binary copy, server data) is removed the same way. Watchdogs
//!   run in their own process group, so a Ctrl-C on `cargo test` does not kill
//!   them before they clean up.
//! * **Temp dirs** are removed on drop unless `WALARCHIVE_KEEP_TEST_DIRS=1`
//!   (then their paths are printed to stderr and the watchdogs leave them).
//!
//! Everything is synchronous (`std::process`, `std::net`); no tokio.
#![allow(dead_code)]

pub mod bursts;
pub mod gcs;
pub mod machine;
mod proxy;
mod repos;
pub mod stores;
pub mod swift;
mod wal_source;
#[allow(unused_imports)]
pub use gcs::{gcs, GcsServer};
#[allow(unused_imports)]
pub use proxy::{Fault, Proxy};
#[allow(unused_imports)]
pub use repos::{Repo, Store};
#[allow(unused_imports)]
pub use swift::{swift, SwiftServer};
#[allow(unused_imports)]
pub use wal_source::WalSource;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------
// Process-wide basics: temp dirs, the postgres user, watchdogs
// ---------------------------------------------------------------------------

/// A digest of the pgbench tables' content, to compare a restored cluster with its source.
pub const PGBENCH_DIGEST: &str = "select (select count(*) || ':' || md5(string_agg(aid || ':' || abalance, ',' order by aid)) from pgbench_accounts) \
     || '/' || (select count(*) from pgbench_history) || '/' || (select sum(bbalance) from pgbench_branches)";

/// Default location of the PostgreSQL 15 binaries (override with `WALARCHIVE_PG_BIN`).
pub const PG_BIN_DEFAULT: &str = "/usr/lib/postgresql/15/bin";

/// True when `WALARCHIVE_KEEP_TEST_DIRS=1`: temp dirs are kept for inspection.
pub fn keep_dirs() -> bool {
    std::env::var("WALARCHIVE_KEEP_TEST_DIRS").is_ok_and(|v| v == "1")
}

/// Single-quotes `s` for `sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Numeric uid and gid of the `postgres` OS user.
pub fn postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .expect("run `id`");
            assert!(
                out.status.success(),
                "OS user `postgres` does not exist: run scripts/setup"
            );
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        (id("-u"), id("-g"))
    })
}

/// `chown -R postgres:postgres path`.
pub fn chown_postgres(path: &Path) {
    let (uid, gid) = postgres_ids();
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .expect("run chown");
    assert!(st.success(), "chown -R postgres {}", path.display());
}

/// Sets the permission bits of `path` (e.g. 0o755).
pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Starts `script` with `sh -c`, fully detached (double fork, own process
/// group, no stdio), and returns immediately. Used for watchdogs.
fn spawn_detached(script: &str) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("( {script} ) </dev/null >/dev/null 2>&1 &"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .status()
        .expect("spawn watchdog");
    assert!(st.success());
}

/// A temp directory under /tmp (mode 0755), removed on drop unless
/// `WALARCHIVE_KEEP_TEST_DIRS=1`.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

/// Marker file in temp dirs created with `WALARCHIVE_KEEP_TEST_DIRS=1`;
/// [`sweep_stale_dirs`] leaves such dirs alone.
const KEEP_MARKER: &str = ".walarchive-keep";

/// Removes `/tmp/walarchive-<kind>-<pid>-*` dirs (stopping any PostgreSQL
/// in `<dir>/data`) whose process is gone: leftovers of a test process that
/// was killed before its watchdogs were in place. Runs once per process.
pub fn sweep_stale_dirs() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Ok(entries) = fs::read_dir("/tmp") else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("walarchive-") else {
                continue;
            };
            let Some(pid) = rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let path = e.path();
            if Path::new(&format!("/proc/{pid}")).exists()
                || !path.is_dir()
                || path.join(KEEP_MARKER).exists()
            {
                continue;
            }
            let data = path.join("data");
            if data.join("postmaster.pid").exists() {
                let _ = Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .arg(pg_bin_dir().join("pg_ctl"))
                    .arg("-D")
                    .arg(&data)
                    .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                    .current_dir("/tmp")
                    .stdin(Stdio::null())
                    .output();
            }
            let _ = fs::remove_dir_all(&path);
        }
    });
}

impl TestDir {
    /// A fresh directory `/tmp/<prefix><pid>-XXXXXX`, owned by root, mode
    /// 0755. Use prefixes of the form `walarchive-<kind>-`.
    pub fn new(prefix: &str) -> TestDir {
        sweep_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}{}-", std::process::id()))
            .tempdir_in("/tmp")
            .expect("create temp dir under /tmp");
        let path = dir.path().to_path_buf();
        chmod(&path, 0o755);
        if keep_dirs() {
            fs::write(path.join(KEEP_MARKER), b"").unwrap();
        }
        TestDir {
            dir: Some(dir),
            path,
        }
    }

    /// Like [`TestDir::new`] but owned by the `postgres` user.
    pub fn new_postgres(prefix: &str) -> TestDir {
        let d = TestDir::new(prefix);
        chown_postgres(&d.path);
        d
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if let Some(mut d) = self.dir.take() {
            if keep_dirs() {
                d.disable_cleanup(true);
                eprintln!("WALARCHIVE_KEEP_TEST_DIRS: keeping {}", self.path.display());
            }
        }
    }
}

/// A directory for this test process (binary copy, object-store data), mode
/// 0755, removed by a watchdog after the process exits.
pub fn proc_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let pid = std::process::id();
        sweep_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("walarchive-test-{pid}-"))
            .tempdir_in("/tmp")
            .expect("create process temp dir under /tmp")
            .keep();
        chmod(&dir, 0o755);
        if keep_dirs() {
            fs::write(dir.join(KEEP_MARKER), b"").unwrap();
            eprintln!("WALARCHIVE_KEEP_TEST_DIRS: keeping {}", dir.display());
        } else {
            spawn_detached(&format!(
                "while kill -0 {pid} 2>/dev/null; do sleep 1; done; sleep 2; rm -rf {}",
                sh_quote(path_str(&dir))
            ));
        }
        dir
    })
}

// ---------------------------------------------------------------------------
// The walarchive binary
// ---------------------------------------------------------------------------

/// Path of a copy of the `walarchive` binary in a 0755 directory under /tmp
/// that the postgres user can execute (copied once per test process).
pub fn walarchive_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_BIN_EXE_walarchive"));
        let dir = proc_dir().join("bin");
        fs::create_dir_all(&dir).unwrap();
        chmod(&dir, 0o755);
        let dst = dir.join("walarchive");
        fs::copy(src, &dst)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", src.display(), dst.display()));
        chmod(&dst, 0o755);
        dst
    })
    .clone()
}

/// A `Command` for the copied walarchive binary (runs as root; add
/// args/env/stdin as needed).
pub fn walarchive_cmd() -> Command {
    let mut c = Command::new(walarchive_bin());
    c.stdin(Stdio::null());
    c
}

/// Runs the copied walarchive binary with `args` and extra `env`, as root,
/// and returns its output (never panics on a non-zero exit).
pub fn run_walarchive(args: &[&str], env: &[(String, String)]) -> Output {
    walarchive_cmd()
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run walarchive")
}

/// Like [`run_walarchive`] but as the postgres user (what archive_command sees),
/// with `cwd` as working directory.
pub fn run_walarchive_as_postgres(args: &[&str], env: &[(String, String)], cwd: &Path) -> Output {
    let mut c = runuser_cmd(&walarchive_bin(), env);
    c.args(args).current_dir(cwd).stdin(Stdio::null());
    c.output().expect("run walarchive as postgres")
}

/// Exit code of `out` (-1 when killed by a signal).
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Panics (showing stdout and stderr) unless `out` exited 0; returns `out`.
#[track_caller]
pub fn assert_success(out: &Output) -> &Output {
    assert!(
        out.status.success(),
        "command failed with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
    out
}

/// Panics (showing stdout and stderr) unless `out` exited with `expected`.
#[track_caller]
pub fn assert_code(out: &Output, expected: i32) -> &Output {
    assert_eq!(
        code(out),
        expected,
        "unexpected exit code\n--- stdout ---\n{}\n--- stderr ---\n{}",
        stdout(out),
        stderr(out)
    );
    out
}

/// A refused conflicting push: exit status 4, a message that says "different content" and
/// names both checksums (sha256). Returns stderr.
#[track_caller]
pub fn assert_conflict(out: &Output) -> String {
    assert_code(out, 4);
    let err = stderr(out);
    assert!(
        // Both digests, of WAL content (BLAKE3 since object format version 3).
        err.contains("different content") && err.matches("blake3 ").count() >= 2,
        "{err}"
    );
    err
}

/// The single `walarchive <command>: error: ...` line of stderr (panics unless exactly one).
#[track_caller]
pub fn error_line(out: &Output) -> String {
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(": error:")).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one error line\n--- stdout ---\n{}\n--- stderr ---\n{err}",
        stdout(out)
    );
    eprintln!("error line: {}", lines[0]);
    lines[0].to_string()
}

// ---------------------------------------------------------------------------
// Ports and polling
// ---------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that is free right now and was not handed out
/// before in this process. Ports come from 20000..32000, below Linux's
/// ephemeral range (32768..), so client connections' local ports never
/// collide with a port handed out here but not yet bound by its server.
pub fn free_port() -> u16 {
    const LO: u32 = 20000;
    const SPAN: u32 = 12000;
    static STATE: OnceLock<Mutex<(u32, HashSet<u16>)>> = OnceLock::new();
    let state = STATE.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        Mutex::new(((h.finish() % SPAN as u64) as u32, HashSet::new()))
    });
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..SPAN {
        st.0 = (st.0 + 1) % SPAN;
        let port = (LO + st.0) as u16;
        if st.1.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            st.1.insert(port);
            return port;
        }
    }
    panic!("no free TCP port in {LO}..{}", LO + SPAN);
}

/// Calls `f` every 100 ms until it returns true; false after `timeout`.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Calls `f` every 100 ms until it returns true; panics with "timed out
/// waiting for {what}" after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    if !poll_until(timeout, f) {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

/// Directory holding initdb, pg_ctl, postgres, psql, pgbench, ...
pub fn pg_bin_dir() -> PathBuf {
    let dir = std::env::var_os("WALARCHIVE_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(PG_BIN_DEFAULT));
    assert!(
        dir.join("postgres").exists(),
        "PostgreSQL binaries not found in {}: run scripts/setup",
        dir.display()
    );
    dir
}

pub fn pg_bin(name: &str) -> PathBuf {
    pg_bin_dir().join(name)
}

/// `runuser -u postgres -- env K=V... <program>`, cwd /tmp.
fn runuser_cmd(program: &Path, env: &[(String, String)]) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", "env"]);
    for (k, v) in env {
        c.arg(format!("{k}={v}"));
    }
    c.arg(program).current_dir("/tmp");
    c
}

/// Runs a PostgreSQL program as the postgres user; panics with its output on failure.
#[track_caller]
fn run_pg_as_postgres(program: &str, args: &[&str], cwd: &Path) -> Output {
    let out = runuser_cmd(&pg_bin(program), &[])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    if !out.status.success() {
        panic!(
            "{program} {args:?} failed with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            stdout(&out),
            stderr(&out)
        );
    }
    out
}

/// Removes libpq variables of the caller's environment that would redirect
/// psql/pgbench away from the test cluster.
fn clear_libpq_env(c: &mut Command) {
    for k in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGOPTIONS",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGSSLMODE",
        "PGTARGETSESSIONATTRS",
    ] {
        c.env_remove(k);
    }
    c.env("PGCONNECT_TIMEOUT", "10");
}

/// Options for [`PgCluster::init`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// `initdb --wal-segsize` in MiB (power of two, 1..=1024). Default 1.
    pub wal_segsize_mb: u32,
    /// Appended to postgresql.conf after the harness's settings.
    pub extra_conf: String,
    /// Extra `initdb` arguments (e.g. `--data-checksums`).
    pub initdb_args: Vec<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            wal_segsize_mb: 1,
            extra_conf: String::new(),
            initdb_args: Vec::new(),
        }
    }
}

/// A PostgreSQL cluster in its own temp dir under /tmp (owned by postgres):
/// `<dir>/data` (data directory), `<dir>/postgres.log` (server log), and the
/// Unix socket in `<dir>`. Listens on 127.0.0.1:`port()`. Not started by
/// `init`; stopped (immediate) and removed on drop.
pub struct PgCluster {
    dir: TestDir,
    data: PathBuf,
    port: AtomicU16,
    env: Mutex<Vec<(String, String)>>,
}

impl PgCluster {
    /// `initdb` a new cluster (not started). See [`PgOptions`].
    pub fn init(opts: PgOptions) -> PgCluster {
        let c = PgCluster::empty();
        let seg = opts.wal_segsize_mb.max(1);
        let data = path_str(&c.data).to_string();
        let segsize = format!("--wal-segsize={seg}");
        let mut args: Vec<&str> = vec![
            "-D",
            &data,
            "-U",
            "postgres",
            "--auth=trust",
            &segsize,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-instructions",
            "--no-sync",
        ];
        args.extend(opts.initdb_args.iter().map(String::as_str));
        run_pg_as_postgres("initdb", &args, c.dir());
        let min_wal = 2 * seg;
        let max_wal = (4 * seg).max(32);
        c.append_conf(&format!(
            "\n# --- walarchive test harness ---\n\
             fsync = off\n\
             shared_buffers = 16MB\n\
             max_connections = 40\n\
             min_wal_size = {min_wal}MB\n\
             max_wal_size = {max_wal}MB\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%a '\n\
             {}",
            c.local_conf()
        ));
        if !opts.extra_conf.is_empty() {
            c.append_conf(&opts.extra_conf);
        }
        c
    }

    /// A new cluster object whose data directory (`data_dir()`) does not
    /// exist yet, with a fresh port; fill it (e.g. by a restore), then call
    /// [`PgCluster::adopt_data_dir`] before `start`.
    pub fn empty() -> PgCluster {
        let dir = TestDir::new_postgres("walarchive-pg-");
        let data = dir.join("data");
        let c = PgCluster {
            dir,
            data,
            port: AtomicU16::new(free_port()),
            env: Mutex::new(Vec::new()),
        };
        c.spawn_watchdog();
        c
    }

    /// Copies an existing (stopped, or crash-consistent) data directory into
    /// a new cluster and adopts it (unstarted).
    pub fn from_data_dir(src: &Path) -> PgCluster {
        let c = PgCluster::empty();
        fs::create_dir(&c.data).unwrap();
        let st = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", src.display()))
            .arg(&c.data)
            .status()
            .expect("run cp");
        assert!(st.success(), "cp -a {} {}", src.display(), c.data.display());
        let _ = fs::remove_file(c.data.join("postmaster.pid"));
        c.adopt_data_dir();
        c
    }

    /// Makes `data_dir()` usable by this cluster: owned by postgres, mode
    /// 0700, and postgresql.conf pointed at this cluster's port and socket dir.
    pub fn adopt_data_dir(&self) {
        assert!(self.data.is_dir(), "{} does not exist", self.data.display());
        chown_postgres(&self.data);
        chmod(&self.data, 0o700);
        self.append_conf(&format!(
            "\n# --- walarchive test harness: this copy's own settings ---\n{}",
            self.local_conf()
        ));
    }

    fn local_conf(&self) -> String {
        format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n",
            self.port(),
            self.dir().display()
        )
    }

    /// Watchdog: once the test process is gone (and the cluster dir still
    /// exists), stop the server and remove the dir.
    fn spawn_watchdog(&self) {
        let pid = std::process::id();
        let dir = sh_quote(path_str(self.dir()));
        let data = sh_quote(path_str(&self.data));
        let pg_ctl = sh_quote(path_str(&pg_bin("pg_ctl")));
        let rm = if keep_dirs() {
            ":".to_string()
        } else {
            format!("rm -rf {dir}")
        };
        spawn_detached(&format!(
            "while kill -0 {pid} 2>/dev/null && [ -d {dir} ]; do sleep 1; done; \
             if [ -d {dir} ]; then \
               if [ -f {data}/postmaster.pid ]; then \
                 runuser -u postgres -- {pg_ctl} -D {data} -m immediate -w -t 30 stop; \
               fi; {rm}; \
             fi"
        ));
    }

    /// The cluster's temp dir (owned by postgres; also usable as scratch
    /// space that archive/restore commands can write to).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// `data_dir()/pg_wal`.
    pub fn wal_dir(&self) -> PathBuf {
        self.data.join("pg_wal")
    }

    pub fn port(&self) -> u16 {
        self.port.load(Ordering::SeqCst)
    }

    /// libpq connection string for this cluster.
    pub fn connstr(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port()
        )
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir().join("postgres.log")
    }

    /// The server log (empty if the server never started).
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// Appends `text` (plus a newline) to postgresql.conf.
    pub fn append_conf(&self, text: &str) {
        let path = self.data.join("postgresql.conf");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        writeln!(f, "{text}").unwrap();
    }

    /// Creates (or empties) `data_dir()/relative` owned by postgres, e.g.
    /// "standby.signal" or "recovery.signal".
    pub fn touch(&self, relative: &str) {
        let path = self.data.join(relative);
        fs::write(&path, b"").unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
    }

    /// Starts the server (`pg_ctl -w -t 60 start`); panics with the log's tail
    /// on failure.
    pub fn start(&self) {
        self.start_with_env(&[]);
    }

    /// Starts the server with extra environment variables (remembered for `restart`), as
    /// [`PgCluster::start_with_env`] does, but returns pg_ctl's output and the server log's
    /// tail instead of panicking when the server does not come up (e.g. recovery aborted).
    pub fn try_start_with_env(&self, env: &[(String, String)]) -> Result<(), String> {
        *self.env.lock().unwrap_or_else(|e| e.into_inner()) = env.to_vec();
        let out = runuser_cmd(&pg_bin("pg_ctl"), env)
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "start"])
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl start");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}
{}",
                stdout(&out),
                stderr(&out),
                self.log_tail(30)
            ))
        }
    }

    /// Starts the server with extra environment variables, which the
    /// postmaster passes on to archive_command/restore_command. Remembered
    /// for `restart`.
    pub fn start_with_env(&self, env: &[(String, String)]) {
        *self.env.lock().unwrap_or_else(|e| e.into_inner()) = env.to_vec();
        for attempt in 0..5 {
            let log_len = fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0);
            let out = runuser_cmd(&pg_bin("pg_ctl"), env)
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(self.log_path())
                .args(["-w", "-t", "60", "start"])
                .current_dir(self.dir())
                .stdin(Stdio::null())
                .output()
                .expect("run pg_ctl start");
            if out.status.success() {
                return;
            }
            let log = self.log();
            let new_log = log.get(log_len as usize..).unwrap_or(&log);
            let port_taken = new_log.contains("could not bind")
                || new_log.contains("could not create any TCP/IP sockets")
                || new_log.contains("Address already in use");
            if port_taken && attempt < 4 && !self.is_running() {
                self.port.store(free_port(), Ordering::SeqCst);
                self.append_conf(&format!("port = {}", self.port()));
                continue;
            }
            panic!(
                "pg_ctl start failed ({:?}) for {}\n--- pg_ctl ---\n{}{}\n--- server log (tail) ---\n{}",
                out.status,
                self.data.display(),
                stdout(&out),
                stderr(&out),
                tail(&log, 60)
            );
        }
    }

    /// Starts the server without waiting for it to accept connections (`pg_ctl -W start`),
    /// for a server expected to stop by itself (a recovery that must fail).
    pub fn start_no_wait(&self, env: &[(String, String)]) {
        let out = runuser_cmd(&pg_bin("pg_ctl"), env)
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .args(["-W", "start"])
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl start");
        assert!(out.status.success(), "pg_ctl -W start: {}", stderr(&out));
    }

    fn pg_ctl_stop(&self, mode: &str) -> Output {
        runuser_cmd(&pg_bin("pg_ctl"), &[])
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl stop")
    }

    fn stop_mode(&self, mode: &str) {
        let out = self.pg_ctl_stop(mode);
        if !out.status.success() {
            panic!(
                "pg_ctl stop -m {mode} failed ({:?})\n{}{}\n--- server log (tail) ---\n{}",
                out.status,
                stdout(&out),
                stderr(&out),
                self.log_tail(40)
            );
        }
    }

    /// Fast shutdown (waits; panics on failure).
    pub fn stop(&self) {
        self.stop_mode("fast");
    }

    /// Immediate shutdown, i.e. a simulated crash (waits; panics on failure).
    pub fn stop_immediate(&self) {
        self.stop_mode("immediate");
    }

    /// Fast stop, then start with the environment of the last start.
    pub fn restart(&self) {
        self.stop();
        let env = self.env.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.start_with_env(&env);
    }

    /// `pg_ctl status` says a server is running on this data dir.
    pub fn is_running(&self) -> bool {
        if !self.data.join("postmaster.pid").exists() {
            return false;
        }
        runuser_cmd(&pg_bin("pg_ctl"), &[])
            .arg("-D")
            .arg(&self.data)
            .arg("status")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `pg_ctl promote -w` (standby -> primary).
    pub fn promote(&self) {
        let data = path_str(&self.data).to_string();
        run_pg_as_postgres(
            "pg_ctl",
            &["-D", &data, "-w", "-t", "60", "promote"],
            self.dir(),
        );
    }

    /// Runs `sql` with psql (`-XAtq`, ON_ERROR_STOP); returns trimmed stdout
    /// or stderr on failure.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let mut c = Command::new(pg_bin("psql"));
        clear_libpq_env(&mut c);
        let out = c
            .args(["-h", "127.0.0.1", "-p", &self.port().to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-XAtq"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(stdout(&out).trim().to_string())
        } else {
            Err(format!("{}{}", stderr(&out), stdout(&out)))
        }
    }

    /// Runs `sql` with psql; returns trimmed stdout; panics with stderr.
    #[track_caller]
    pub fn psql(&self, sql: &str) -> String {
        match self.try_psql(sql) {
            Ok(s) => s,
            Err(e) => panic!("psql on port {} failed: {sql}\n{e}", self.port()),
        }
    }

    /// [`wait_until`], but the panic message includes the server log's tail.
    #[track_caller]
    pub fn wait_until(&self, what: &str, timeout: Duration, f: impl FnMut() -> bool) {
        if !poll_until(timeout, f) {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n--- server log (tail) ---\n{}",
                self.log_tail(40)
            );
        }
    }

    /// Writes a tiny WAL record, switches to a new WAL segment and returns
    /// the name of the segment just completed (to be archived).
    pub fn switch_wal(&self) -> String {
        self.psql(
            "select pg_logical_emit_message(false, 'walarchive-test', 'switch'); \
             select pg_walfile_name(pg_switch_wal())",
        )
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
    }

    /// `last_archived_wal|archived_count|last_failed_wal|failed_count` from
    /// pg_stat_archiver.
    pub fn archiver_status(&self) -> String {
        self.psql(
            "select concat_ws('|', coalesce(last_archived_wal, ''), archived_count, \
             coalesce(last_failed_wal, ''), failed_count) from pg_stat_archiver",
        )
    }

    /// Switches to a new segment and waits until everything written so far is archived.
    pub fn archive_everything(&self) {
        let last = self.switch_wal();
        self.wait_archived(&last, Duration::from_secs(120));
    }

    /// Waits until recovery has ended and the server accepts writes.
    pub fn wait_promoted(&self) {
        self.wait_until("recovery to finish", Duration::from_secs(180), || {
            self.try_psql("select pg_is_in_recovery()")
                .is_ok_and(|r| r == "f")
        });
    }

    /// Waits until pg_stat_archiver reports `segment` (a WAL file name) or a
    /// later segment of the same naming as archived.
    pub fn wait_archived(&self, segment: &str, timeout: Duration) {
        let seg = segment.to_string();
        self.wait_until(&format!("{seg} to be archived"), timeout, || {
            let last = self
                .try_psql("select coalesce(last_archived_wal, '') from pg_stat_archiver")
                .unwrap_or_default();
            last.len() >= 24 && last[..24] >= seg[..seg.len().min(24)]
        });
    }

    /// The WAL segments PostgreSQL has archived (`archive_status/NAME.done`; not history or
    /// backup history files), sorted.
    pub fn done_segments(&self) -> Vec<String> {
        let mut done: Vec<String> = fs::read_dir(self.wal_dir().join("archive_status"))
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".done")
                    .filter(|n| n.len() == 24)
                    .map(str::to_string)
            })
            .collect();
        done.sort();
        done
    }

    /// `pg_basebackup -X stream --checkpoint=fast` of this (running) cluster
    /// into a new, unstarted cluster with its own port.
    pub fn basebackup(&self) -> PgCluster {
        self.basebackup_with(&[])
    }

    /// [`PgCluster::basebackup`] with extra pg_basebackup arguments (e.g. `-R`).
    pub fn basebackup_with(&self, extra: &[&str]) -> PgCluster {
        let c = PgCluster::empty();
        let data = path_str(&c.data).to_string();
        let port = self.port().to_string();
        let mut args = vec![
            "-D",
            &data,
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-sync",
        ];
        args.extend_from_slice(extra);
        run_pg_as_postgres("pg_basebackup", &args, c.dir());
        c.adopt_data_dir();
        c
    }

    fn pgbench_cmd(&self) -> Command {
        let mut c = Command::new(pg_bin("pgbench"));
        clear_libpq_env(&mut c);
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port().to_string(),
            "-U",
            "postgres",
        ])
        .stdin(Stdio::null());
        c
    }

    /// `pgbench -i -s scale -q`; panics on failure.
    pub fn pgbench_init(&self, scale: u32) {
        let out = self
            .pgbench_cmd()
            .args(["-i", "-q", "-s", &scale.to_string(), "postgres"])
            .output()
            .expect("run pgbench -i");
        assert_success(&out);
    }

    /// `pgbench <connection options> <args> postgres`; returns stdout, panics
    /// on failure. Don't pass a database name in `args`.
    pub fn pgbench(&self, args: &[&str]) -> String {
        let out = self
            .pgbench_cmd()
            .args(args)
            .arg("postgres")
            .output()
            .expect("run pgbench");
        assert_success(&out);
        stdout(&out)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = self.pg_ctl_stop("immediate");
        }
        if std::thread::panicking() {
            eprintln!(
                "--- server log of {} (port {}), tail ---\n{}",
                self.data.display(),
                self.port(),
                self.log_tail(60)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Minimal HTTP/1.1 client, crypto and time helpers (for S3 / Azure requests)
// ---------------------------------------------------------------------------

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one HTTP/1.1 request to 127.0.0.1:`port` (`Connection: close`) and
/// reads the whole response. `target` is the request target (path + query).
/// `Host` and `Content-Length` are added here.
pub fn http_request(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        let _ = write!(req, "{k}: {v}\r\n");
    }
    let _ = write!(
        req,
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    s.flush()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_http_response(&raw, method == "HEAD")
}

fn parse_http_response(raw: &[u8], head: bool) -> std::io::Result<HttpResponse> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of HTTP headers"))?;
    let head_text = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let mut resp = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if head || status == 204 || status == 304 {
        return Ok(resp);
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut i = 0;
        loop {
            let nl = rest[i..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("truncated chunk size"))?;
            let size_text = String::from_utf8_lossy(&rest[i..i + nl]).into_owned();
            let size_hex = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad("bad chunk size"))?;
            i += nl + 2;
            if size == 0 {
                break;
            }
            let chunk = rest
                .get(i..i + size)
                .ok_or_else(|| bad("truncated chunk"))?;
            resp.body.extend_from_slice(chunk);
            i += size + 2;
        }
    } else if let Some(len) = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        resp.body = rest[..len.min(rest.len())].to_vec();
    } else {
        resp.body = rest.to_vec();
    }
    Ok(resp)
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// HMAC-SHA256 (RFC 2104) on top of `sha2`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 decoding (padding optional); panics on invalid input.
pub fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
    {
        let v = B64
            .iter()
            .position(|&x| x == c)
            .unwrap_or_else(|| panic!("invalid base64 character {:?}", c as char));
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `/`
/// when `keep_slash`), as AWS SigV4 and Azure expect.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// UTC broken-down time: (year, month, day, hour, minute, second, weekday 0=Sun).
fn utc_parts(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let days = secs.div_euclid(86400);
    let sod = secs.rem_euclid(86400) as u32;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    let wday = (days + 4).rem_euclid(7) as u32;
    (y, m, d, sod / 3600, sod / 60 % 60, sod % 60, wday)
}

/// RFC 1123 date, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d, hh, mm, ss, wd) = utc_parts(t);
    format!(
        "{}, {d:02} {} {y:04} {hh:02}:{mm:02}:{ss:02} GMT",
        DAYS[wd as usize],
        MONTHS[m as usize - 1]
    )
}

/// ISO 8601 basic format as in SigV4, e.g. "20240131T235959Z".
pub fn amz_date(t: SystemTime) -> String {
    let (y, m, d, hh, mm, ss, _) = utc_parts(t);
    format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z")
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Text of every `<tag>...</tag>` in `xml`, unescaped.
fn xml_all(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(xml_unescape(&rest[..j]));
        rest = &rest[j + close.len()..];
    }
    out
}

// ---------------------------------------------------------------------------
// Shared object-store servers
// ---------------------------------------------------------------------------

/// Finds `name` on PATH or in `$CARGO_HOME/bin` / `~/.cargo/bin`.
fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(h).join("bin"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// A TCP echo server on 127.0.0.1 (a thread per connection, for the rest of the process):
/// its port. What the proxy's tests forward to.
pub fn echo_server() -> u16 {
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut rx = conn.try_clone().unwrap();
                let mut tx = conn;
                let _ = std::io::copy(&mut rx, &mut tx);
            });
        }
    });
    port
}

/// Spawns the watchdog shell `script` of server `what` (`sh -c`, in its own process group,
/// no stdio): it starts the server and kills it once this test process is gone.
pub fn spawn_watchdog(what: &str, script: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn the {what} watchdog: {e}"))
}

/// Polls `ready` every `poll` until it gives the server that `watchdog` started: `Ok` with
/// it (the watchdog is never waited for; it outlives us). `Err` with the server's `logs`
/// when the watchdog exits early (the caller retries on other ports); a panic with them
/// when the server is not ready within `timeout`.
pub fn await_ready<T>(
    what: &str,
    mut watchdog: Child,
    timeout: Duration,
    poll: Duration,
    logs: impl Fn() -> String,
    mut ready: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = watchdog.try_wait() {
            eprintln!("{what} exited early ({status}); retrying on other ports");
            return Err(logs());
        }
        if let Some(server) = ready() {
            drop(watchdog);
            eprintln!("{what} ready in {:.1} s", started.elapsed().as_secs_f64());
            return Ok(server);
        }
        if started.elapsed() > timeout {
            let _ = watchdog.kill();
            panic!(
                "{what} did not become ready within {} s\n{}",
                timeout.as_secs(),
                logs()
            );
        }
        std::thread::sleep(poll);
    }
}

/// Starts `program args` (with `{port}` in args replaced by a free port) in
/// the background behind a watchdog that kills it once this test process is
/// gone; waits until it answers HTTP. Retries on another port if it exits
/// early. Returns the port.
fn start_server(what: &str, program: &Path, args: &[String], dir: &Path) -> u16 {
    let pid = std::process::id();
    let log = dir.join("server.log");
    let mut last_log = String::new();
    for _attempt in 0..3 {
        let port = free_port();
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let script = format!(
            "\"$0\" \"$@\" >{log} 2>&1 </dev/null & s=$!\n\
             while kill -0 {pid} 2>/dev/null; do\n\
               if ! kill -0 $s 2>/dev/null; then wait $s; exit $?; fi\n\
               sleep 0.5\n\
             done\n\
             kill $s 2>/dev/null; sleep 1; kill -9 $s 2>/dev/null; exit 0",
            log = sh_quote(path_str(&log)),
        );
        let mut child: Child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(program)
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                last_log = fs::read_to_string(&log).unwrap_or_default();
                eprintln!("{what} exited early ({status}) on port {port}; retrying");
                break;
            }
            if http_request(port, "GET", "/", &[], b"").is_ok() {
                // The watchdog shell is never waited for; it outlives us.
                drop(child);
                return port;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!(
                    "{what} did not answer HTTP on 127.0.0.1:{port} within 60 s\n--- log ---\n{}",
                    tail(&fs::read_to_string(&log).unwrap_or_default(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!(
        "{what} failed to start 3 times\n--- log ---\n{}",
        tail(&last_log, 40)
    );
}

/// Which S3 server [`s3()`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Kind {
    /// `s3s-fs` (default): buckets and objects are plain directories/files under `root_dir()`.
    S3sFs,
    /// `moto_server` (`WALARCHIVE_TEST_S3=moto`): in memory.
    Moto,
}

/// The shared S3 server of this test process.
pub struct S3Server {
    pub kind: S3Kind,
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    dir: PathBuf,
    root: PathBuf,
    counter: AtomicU64,
}

/// The S3 server shared by all tests of this process (started on first use):
/// `s3s-fs`, or `moto_server` when `WALARCHIVE_TEST_S3=moto`.
pub fn s3() -> &'static S3Server {
    static S3: OnceLock<S3Server> = OnceLock::new();
    S3.get_or_init(S3Server::start)
}

impl S3Server {
    fn start() -> S3Server {
        let kind = match std::env::var("WALARCHIVE_TEST_S3").as_deref() {
            Ok("moto") => S3Kind::Moto,
            Ok("") | Ok("s3s-fs") | Ok("s3s") | Err(_) => S3Kind::S3sFs,
            Ok(other) => panic!("WALARCHIVE_TEST_S3={other}: expected s3s-fs or moto"),
        };
        let dir = proc_dir().join("s3");
        let root = dir.join("root");
        fs::create_dir_all(&root).unwrap();
        let access_key = "walarchive-test-access-key".to_string();
        let secret_key = "walarchive-test-secret-key".to_string();
        let port = match kind {
            S3Kind::S3sFs => {
                let prog = find_program("s3s-fs")
                    .expect("s3s-fs not found (PATH, ~/.cargo/bin): run scripts/setup");
                let args = [
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "{port}",
                    "--access-key",
                    &access_key,
                    "--secret-key",
                    &secret_key,
                    path_str(&root),
                ]
                .map(String::from);
                start_server("s3s-fs", &prog, &args, &dir)
            }
            S3Kind::Moto => {
                let prog =
                    find_program("moto_server").expect("moto_server not found: run scripts/setup");
                let args = ["-H", "127.0.0.1", "-p", "{port}"].map(String::from);
                start_server("moto_server", &prog, &args, &dir)
            }
        };
        S3Server {
            kind,
            port,
            access_key,
            secret_key,
            region: "us-east-1".into(),
            dir,
            root,
            counter: AtomicU64::new(0),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// s3s-fs's storage root (`<root>/<bucket>/<key>`); unused by moto.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// The server's own log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Environment for walarchive (object_store's AmazonS3Builder::from_env).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), self.region.clone()),
            ("AWS_ENDPOINT".into(), self.endpoint()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    /// A SigV4-signed path-style request. `path` is unencoded, e.g.
    /// "/bucket/some key"; `query` pairs are unencoded.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let now = SystemTime::now();
        let amz = amz_date(now);
        let date = &amz[..8];
        let host = format!("127.0.0.1:{}", self.port);
        let payload_hash = sha256_hex(body);
        let canonical_uri = uri_encode(path, true);
        let mut q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
            .collect();
        q.sort();
        let canonical_query = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let signed_headers = "host;x-amz-content-sha256;x-amz-date";
        let canonical_request = format!(
            "{method}\n{canonical_uri}\n{canonical_query}\nhost:{host}\nx-amz-content-sha256:{payload_hash}\nx-amz-date:{amz}\n\n{signed_headers}\n{payload_hash}"
        );
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz}\n{scope}\n{}",
            sha256_hex(canonical_request.as_bytes())
        );
        let mut key = hmac_sha256(
            format!("AWS4{}", self.secret_key).as_bytes(),
            date.as_bytes(),
        );
        for part in [self.region.as_str(), "s3", "aws4_request"] {
            key = hmac_sha256(&key, part.as_bytes());
        }
        let signature = hex::encode(hmac_sha256(&key, string_to_sign.as_bytes()));
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key
        );
        let target = if canonical_query.is_empty() {
            canonical_uri
        } else {
            format!("{canonical_uri}?{canonical_query}")
        };
        let headers = vec![
            ("x-amz-date".to_string(), amz.clone()),
            ("x-amz-content-sha256".to_string(), payload_hash),
            ("Authorization".to_string(), auth),
        ];
        http_request(self.port, method, &target, &headers, body)
            .unwrap_or_else(|e| panic!("S3 {method} {target}: {e}"))
    }

    /// CreateBucket; panics unless the server answers 200.
    pub fn create_bucket(&self, name: &str) {
        let r = self.request("PUT", &format!("/{name}"), &[], b"");
        assert_eq!(r.status, 200, "CreateBucket {name}: {}", r.text());
    }

    /// Creates and returns a bucket name unique within this test process.
    pub fn fresh_bucket(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let name = format!("wa-{}-{n}", std::process::id());
        self.create_bucket(&name);
        name
    }

    /// PutObject; panics unless 200.
    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) {
        let r = self.request("PUT", &format!("/{bucket}/{key}"), &[], body);
        assert_eq!(r.status, 200, "PutObject {bucket}/{key}: {}", r.text());
    }

    /// GetObject: Some(body), or None on 404.
    pub fn get_object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let r = self.request("GET", &format!("/{bucket}/{key}"), &[], b"");
        match r.status {
            200 => Some(r.body),
            404 => None,
            s => panic!("GetObject {bucket}/{key}: {s} {}", r.text()),
        }
    }

    /// DeleteObject (ok if absent).
    pub fn delete_object(&self, bucket: &str, key: &str) {
        let r = self.request("DELETE", &format!("/{bucket}/{key}"), &[], b"");
        assert!(
            r.status == 204 || r.status == 200 || r.status == 404,
            "DeleteObject {bucket}/{key}: {} {}",
            r.status,
            r.text()
        );
    }

    /// All keys under `prefix` (ListObjectsV2, all pages), sorted.
    pub fn list_objects(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = vec![("list-type", "2"), ("prefix", prefix)];
            if let Some(t) = &token {
                q.push(("continuation-token", t));
            }
            let r = self.request("GET", &format!("/{bucket}"), &q, b"");
            assert_eq!(r.status, 200, "ListObjectsV2 {bucket}: {}", r.text());
            let xml = r.text();
            keys.extend(xml_all(&xml, "Key"));
            token = xml_all(&xml, "NextContinuationToken").pop();
            let truncated = xml_all(&xml, "IsTruncated").pop().as_deref() == Some("true");
            if !truncated || token.is_none() {
                break;
            }
        }
        keys.sort();
        keys
    }
}

/// The shared Azurite (blob service) of this test process.
pub struct Azurite {
    pub port: u16,
    dir: PathBuf,
    counter: AtomicU64,
}

/// The Azurite blob server shared by all tests of this process (started on first use).
pub fn azurite() -> &'static Azurite {
    static AZ: OnceLock<Azurite> = OnceLock::new();
    AZ.get_or_init(Azurite::start)
}

impl Azurite {
    /// The emulator's well-known account.
    pub const ACCOUNT: &'static str = "devstoreaccount1";
    /// The emulator's well-known account key (public, documented by Microsoft;
    /// the same value as Azurite's and object_store's built-in constant).
    /// Beware a corrupted variant ending in `...K1SZFf3eR4h9ae/eD9LXyg==`
    /// that circulates: Azurite rejects it with 403.
    pub const KEY: &'static str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    /// x-ms-version sent by the harness.
    pub const API_VERSION: &'static str = "2021-12-02";

    fn start() -> Azurite {
        let prog = find_program("azurite-blob").expect("azurite-blob not found: run scripts/setup");
        let dir = proc_dir().join("azurite");
        let location = dir.join("data");
        fs::create_dir_all(&location).unwrap();
        let mut args = [
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "{port}",
            "--location",
            path_str(&location),
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
            "--disableTelemetry",
        ]
        .map(String::from)
        .to_vec();
        // WALARCHIVE_AZURITE_DEBUG=1: Azurite's debug log (incl. the string it
        // signs for SharedKey) goes to <proc dir>/azurite/debug.log.
        if std::env::var("WALARCHIVE_AZURITE_DEBUG").is_ok_and(|v| v == "1") {
            args.push("--debug".into());
            args.push(path_str(&dir.join("debug.log")).into());
        }
        let port = start_server("azurite-blob", &prog, &args, &dir);
        Azurite {
            port,
            dir,
            counter: AtomicU64::new(0),
        }
    }

    /// `http://127.0.0.1:PORT` (what AZURITE_BLOB_STORAGE_URL holds).
    pub fn blob_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1`
    pub fn endpoint(&self) -> String {
        format!("{}/{}", self.blob_url(), Self::ACCOUNT)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Environment for walarchive (object_store's MicrosoftAzureBuilder::from_env).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
            ("AZURITE_BLOB_STORAGE_URL".into(), self.blob_url()),
            ("AZURE_STORAGE_ACCOUNT_NAME".into(), Self::ACCOUNT.into()),
            ("AZURE_STORAGE_ACCOUNT_KEY".into(), Self::KEY.into()),
        ]
    }

    /// A SharedKey-signed request. `path` is relative to the account and
    /// unencoded, e.g. "/container/blob name"; `query` pairs unencoded;
    /// `headers` may include x-ms-* headers (signed) and Content-Type.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let mut hdrs: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        hdrs.push(("x-ms-date".into(), http_date(SystemTime::now())));
        hdrs.push(("x-ms-version".into(), Self::API_VERSION.into()));
        let std_header = |name: &str| -> String {
            hdrs.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let mut ms: Vec<(String, String)> = hdrs
            .iter()
            .filter(|(k, _)| k.to_ascii_lowercase().starts_with("x-ms-"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        ms.sort();
        let canonical_headers: String = ms.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let encoded_path = uri_encode(path, true);
        let mut canonical_resource =
            format!("/{}/{}{}", Self::ACCOUNT, Self::ACCOUNT, encoded_path);
        let mut q: Vec<(String, &str)> = query
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), *v))
            .collect();
        q.sort();
        for (k, v) in &q {
            let _ = write!(canonical_resource, "\n{k}:{v}");
        }
        let content_length = if body.is_empty() {
            String::new()
        } else {
            body.len().to_string()
        };
        let string_to_sign = format!(
            "{method}\n{}\n{}\n{content_length}\n{}\n{}\n\n{}\n{}\n{}\n{}\n{}\n{canonical_headers}{canonical_resource}",
            std_header("Content-Encoding"),
            std_header("Content-Language"),
            std_header("Content-MD5"),
            std_header("Content-Type"),
            std_header("If-Modified-Since"),
            std_header("If-Match"),
            std_header("If-None-Match"),
            std_header("If-Unmodified-Since"),
            std_header("Range"),
        );
        let sig = base64_encode(&hmac_sha256(
            &base64_decode(Self::KEY),
            string_to_sign.as_bytes(),
        ));
        hdrs.push((
            "Authorization".into(),
            format!("SharedKey {}:{sig}", Self::ACCOUNT),
        ));
        let query_string = query
            .iter()
            .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
            .collect::<Vec<_>>()
            .join("&");
        let mut target = format!("/{}{}", Self::ACCOUNT, encoded_path);
        if !query_string.is_empty() {
            target = format!("{target}?{query_string}");
        }
        http_request(self.port, method, &target, &hdrs, body)
            .unwrap_or_else(|e| panic!("Azure {method} {target}: {e}"))
    }

    /// Create Container; returns the HTTP status (201 created, 409 exists).
    pub fn try_create_container(&self, name: &str) -> u16 {
        self.request(
            "PUT",
            &format!("/{name}"),
            &[("restype", "container")],
            &[],
            b"",
        )
        .status
    }

    /// Create Container; panics unless 201.
    pub fn create_container(&self, name: &str) {
        let status = self.try_create_container(name);
        assert_eq!(status, 201, "create container {name}");
    }

    /// Creates and returns a container name unique within this test process.
    pub fn fresh_container(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let name = format!("wa-{}-{n}", std::process::id());
        self.create_container(&name);
        name
    }

    /// Put Blob (block blob); panics unless 201.
    pub fn put_blob(&self, container: &str, name: &str, body: &[u8]) {
        let r = self.request(
            "PUT",
            &format!("/{container}/{name}"),
            &[],
            &[("x-ms-blob-type", "BlockBlob")],
            body,
        );
        assert_eq!(r.status, 201, "put blob {container}/{name}: {}", r.text());
    }

    /// Get Blob: Some(body), or None on 404.
    pub fn get_blob(&self, container: &str, name: &str) -> Option<Vec<u8>> {
        let r = self.request("GET", &format!("/{container}/{name}"), &[], &[], b"");
        match r.status {
            200 => Some(r.body),
            404 => None,
            s => panic!("get blob {container}/{name}: {s} {}", r.text()),
        }
    }

    /// Delete Blob (ok if absent).
    pub fn delete_blob(&self, container: &str, name: &str) {
        let r = self.request("DELETE", &format!("/{container}/{name}"), &[], &[], b"");
        assert!(
            r.status == 202 || r.status == 404,
            "delete blob {container}/{name}: {} {}",
            r.status,
            r.text()
        );
    }

    /// All blob names under `prefix` (List Blobs, all pages), sorted.
    pub fn list_blobs(&self, container: &str, prefix: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut marker = String::new();
        loop {
            let mut q = vec![("restype", "container"), ("comp", "list")];
            if !prefix.is_empty() {
                q.push(("prefix", prefix));
            }
            if !marker.is_empty() {
                q.push(("marker", &marker));
            }
            let r = self.request("GET", &format!("/{container}"), &q, &[], b"");
            assert_eq!(r.status, 200, "list blobs {container}: {}", r.text());
            let xml = r.text();
            let blobs = xml.split("<Blobs>").nth(1).unwrap_or("");
            names.extend(xml_all(blobs, "Name"));
            let next = xml_all(&xml, "NextMarker").pop().unwrap_or_default();
            if next.is_empty() {
                break;
            }
            marker = next;
        }
        names.sort();
        names
    }
}
