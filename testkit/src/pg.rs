//! PostgreSQL clusters in temp dirs, run as the `postgres` user.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::tmp::{path_str, spawn_detached};
use crate::wait::tail;
use crate::*;

/// A digest of the pgbench tables' content, to compare a restored cluster with its source.
pub const PGBENCH_DIGEST: &str = "select (select count(*) || ':' || md5(string_agg(aid || ':' || abalance, ',' order by aid)) from pgbench_accounts) \
     || '/' || (select count(*) from pgbench_history) || '/' || (select sum(bbalance) from pgbench_branches)";

/// Default location of the PostgreSQL 15 binaries (Debian's package).
pub const PG_BIN_DEFAULT: &str = "/usr/lib/postgresql/15/bin";
/// Where `scripts/setup` installs the other majors: `<dir>/<major>/bin`.
pub const PG_MAJORS_DIR: &str = "/opt/walarchive-test/pg";
/// Every PostgreSQL major walarchive supports and the tests run.
pub const SUPPORTED_MAJORS: [u32; 4] = [15, 16, 17, 18];

/// The binaries of PostgreSQL `major`: `WALARCHIVE_PG<major>_BIN` if set, else Debian's
/// directory for 15 and `scripts/setup`'s for the others.
pub fn bin_dir_for(major: u32) -> PathBuf {
    if let Some(dir) = std::env::var_os(format!("WALARCHIVE_PG{major}_BIN")) {
        return PathBuf::from(dir);
    }
    if major == 15 {
        PathBuf::from(PG_BIN_DEFAULT)
    } else {
        Path::new(PG_MAJORS_DIR).join(major.to_string()).join("bin")
    }
}

/// The major the tests run on: `WALARCHIVE_TEST_PG` (15, 16, 17 or 18); without it, the
/// major of `WALARCHIVE_PG_BIN`'s server if that is set, else 15.
/// `WALARCHIVE_TEST_PG=18 cargo test` runs the whole suite on PostgreSQL 18.
pub fn default_major() -> u32 {
    static MAJOR: OnceLock<u32> = OnceLock::new();
    *MAJOR.get_or_init(|| {
        let bin_major = std::env::var_os("WALARCHIVE_PG_BIN").map(|dir| {
            let dir = checked_bin_dir(PathBuf::from(dir));
            (major_of_bin(&dir), dir)
        });
        match std::env::var("WALARCHIVE_TEST_PG") {
            Ok(v) if !v.is_empty() => {
                let major: u32 = v.parse().unwrap_or_else(|_| {
                    panic!("WALARCHIVE_TEST_PG={v:?}: expected a major such as 17")
                });
                assert!(
                    SUPPORTED_MAJORS.contains(&major),
                    "WALARCHIVE_TEST_PG={major}: supported majors are {SUPPORTED_MAJORS:?}"
                );
                // Asked for one major, never silently run another.
                if let Some((other, dir)) = bin_major.filter(|(m, _)| *m != major) {
                    panic!(
                        "WALARCHIVE_TEST_PG={major} but WALARCHIVE_PG_BIN={} holds PostgreSQL \
                         {other}: unset one of them",
                        dir.display()
                    );
                }
                major
            }
            _ => bin_major.map_or(15, |(m, _)| m),
        }
    })
}

/// Directory holding initdb, pg_ctl, postgres, psql, pgbench, ... of the default major
/// (`WALARCHIVE_PG_BIN` overrides it with a directory of that major's server).
pub fn pg_bin_dir() -> PathBuf {
    let major = default_major();
    let dir = std::env::var_os("WALARCHIVE_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_dir_for(major));
    checked_bin_dir(dir)
}

/// `dir`, once it holds a server; panics saying how to install one.
fn checked_bin_dir(dir: PathBuf) -> PathBuf {
    assert!(
        dir.join("postgres").exists(),
        "PostgreSQL binaries not found in {}: run scripts/setup",
        dir.display()
    );
    dir
}

/// The binaries of `major`, checked to be installed.
pub fn pg_bin_dir_for(major: u32) -> PathBuf {
    checked_bin_dir(bin_dir_for(major))
}

/// A program of the default major.
pub fn pg_bin(name: &str) -> PathBuf {
    pg_bin_dir().join(name)
}

/// The version a PostgreSQL program's `--version` banner names: `18.6` of
/// `postgres (PostgreSQL) 18.6`, `15.18` of `psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
pub fn version_in_banner(banner: &str) -> Option<&str> {
    let rest = banner.split_once("(PostgreSQL) ")?.1;
    rest.split_whitespace().next()
}

/// The `--version` banner of `bin/postgres`.
fn postgres_banner(bin: &Path) -> String {
    let out = Command::new(bin.join("postgres"))
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("run {}/postgres --version: {e}", bin.display()));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The major of the server in `bin` (`postgres --version`).
pub fn major_of_bin(bin: &Path) -> u32 {
    let text = postgres_banner(bin);
    version_in_banner(&text)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("unexpected postgres --version output: {text:?}"))
}

/// The full server version of `major` (`18.6`, `15.18`), for reports.
pub fn server_version(major: u32) -> String {
    let text = postgres_banner(&pg_bin_dir_for(major));
    version_in_banner(&text)
        .unwrap_or_else(|| panic!("unexpected postgres --version output: {text:?}"))
        .to_string()
}

/// `runuser -u postgres -- <program>` with `env` added to its environment, cwd /tmp.
/// `runuser -u` (no `-l`) keeps the environment but HOME, SHELL, USER and LOGNAME, so the
/// variables reach the program (and a postmaster's archive and restore commands) without
/// being on a command line: `/proc/<pid>/cmdline` is world-readable, and the broker's secrets
/// audit, which samples every process's, must not find the store's test key there when the
/// root package's tests run beside it (scripts/test's second pass).
pub(crate) fn runuser_cmd(program: &Path, env: &[(String, String)]) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]);
    c.envs(env.iter().map(|(k, v)| (k, v)));
    c.arg(program).current_dir("/tmp");
    c
}

/// Runs a PostgreSQL program as the postgres user; panics with its output on failure.
#[track_caller]
fn run_pg_as_postgres(program: &Path, args: &[&str], cwd: &Path) -> Output {
    let out = runuser_cmd(program, &[])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    if !out.status.success() {
        panic!(
            "{} {args:?} failed with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            program.display(),
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
    /// The PostgreSQL major to run; `None`: [`default_major`] (`WALARCHIVE_TEST_PG`).
    pub major: Option<u32>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            wal_segsize_mb: 1,
            extra_conf: String::new(),
            initdb_args: Vec::new(),
            major: None,
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
    /// The binaries run on this data directory (its major's).
    bin: Mutex<PathBuf>,
}

impl PgCluster {
    /// `initdb` a new cluster (not started). See [`PgOptions`].
    pub fn init(opts: PgOptions) -> PgCluster {
        let c = match opts.major {
            Some(major) => PgCluster::empty_for(major),
            None => PgCluster::empty(),
        };
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
        run_pg_as_postgres(&c.bin("initdb"), &args, c.dir());
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
    /// Its binaries are the default major's until [`PgCluster::adopt_data_dir`] reads the
    /// data directory's `PG_VERSION`.
    pub fn empty() -> PgCluster {
        PgCluster::with_bin(pg_bin_dir())
    }

    /// [`PgCluster::empty`] for PostgreSQL `major`.
    pub fn empty_for(major: u32) -> PgCluster {
        PgCluster::with_bin(pg_bin_dir_for(major))
    }

    fn with_bin(bin: PathBuf) -> PgCluster {
        let dir = TestDir::new_postgres("walarchive-pg-");
        let data = dir.join("data");
        let c = PgCluster {
            dir,
            data,
            port: AtomicU16::new(free_port()),
            env: Mutex::new(Vec::new()),
            bin: Mutex::new(bin),
        };
        c.spawn_watchdog();
        c
    }

    /// Copies an existing (stopped, or crash-consistent) data directory into
    /// a new cluster and adopts it (unstarted).
    pub fn from_data_dir(src: &Path) -> PgCluster {
        let c = match major_of_data_dir(src) {
            Some(major) => PgCluster::empty_for(major),
            None => PgCluster::empty(),
        };
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
    /// 0700, postgresql.conf pointed at this cluster's port and socket dir, and the binaries
    /// of the major its `PG_VERSION` names.
    pub fn adopt_data_dir(&self) {
        assert!(self.data.is_dir(), "{} does not exist", self.data.display());
        if let Some(major) = major_of_data_dir(&self.data) {
            if SUPPORTED_MAJORS.contains(&major) {
                *self.bin.lock().unwrap_or_else(|e| e.into_inner()) = pg_bin_dir_for(major);
            }
        }
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
        let pg_ctl = sh_quote(path_str(&self.bin("pg_ctl")));
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

    /// A program of this cluster's major (`pg_waldump`, `pg_controldata`, ...).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir().join(name)
    }

    /// This cluster's binaries.
    pub fn bin_dir(&self) -> PathBuf {
        self.bin.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// This cluster's PostgreSQL major.
    pub fn major(&self) -> u32 {
        major_of_data_dir(&self.data).unwrap_or_else(|| major_of_bin(&self.bin_dir()))
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

    /// `pg_ctl start` (waiting up to 60 s) with `env`, its output whatever the outcome.
    fn pg_ctl_start(&self, env: &[(String, String)]) -> std::process::Output {
        runuser_cmd(&self.bin("pg_ctl"), env)
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "start"])
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl start")
    }

    /// Starts the server with extra environment variables (remembered for `restart`), as
    /// [`PgCluster::start_with_env`] does, but returns pg_ctl's output and the server log's
    /// tail instead of panicking when the server does not come up (e.g. recovery aborted).
    pub fn try_start_with_env(&self, env: &[(String, String)]) -> Result<(), String> {
        *self.env.lock().unwrap_or_else(|e| e.into_inner()) = env.to_vec();
        let out = self.pg_ctl_start(env);
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
            let out = self.pg_ctl_start(env);
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
        let out = runuser_cmd(&self.bin("pg_ctl"), env)
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
        runuser_cmd(&self.bin("pg_ctl"), &[])
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
        runuser_cmd(&self.bin("pg_ctl"), &[])
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
            &self.bin("pg_ctl"),
            &["-D", &data, "-w", "-t", "60", "promote"],
            self.dir(),
        );
    }

    /// Runs `sql` with psql (`-XAtq`, ON_ERROR_STOP); returns trimmed stdout
    /// or stderr on failure.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let mut c = Command::new(self.bin("psql"));
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
        let c = PgCluster::with_bin(self.bin_dir());
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
        run_pg_as_postgres(&self.bin("pg_basebackup"), &args, c.dir());
        c.adopt_data_dir();
        c
    }

    fn pgbench_cmd(&self) -> Command {
        let mut c = Command::new(self.bin("pgbench"));
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

/// The major a data directory's `PG_VERSION` names, if it has one.
pub fn major_of_data_dir(data: &Path) -> Option<u32> {
    fs::read_to_string(data.join("PG_VERSION"))
        .ok()
        .and_then(|v| v.trim().parse().ok())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment given to a program run as postgres is on no command line.
    #[test]
    fn versions_in_banners() {
        let debian = "psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n";
        assert_eq!(version_in_banner(debian), Some("15.18"));
        assert_eq!(
            version_in_banner("postgres (PostgreSQL) 18.6\n"),
            Some("18.6")
        );
        assert_eq!(version_in_banner("something else"), None);
    }

    #[test]
    fn runuser_env_stays_off_the_command_line() {
        let env = [("AWS_SECRET_ACCESS_KEY".to_string(), "s3cr3t".to_string())];
        let c = runuser_cmd(Path::new("/bin/true"), &env);
        let args: Vec<_> = c.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(args, ["-u", "postgres", "--", "/bin/true"]);
        assert!(c
            .get_envs()
            .any(|(k, v)| k == "AWS_SECRET_ACCESS_KEY" && v == Some("s3cr3t".as_ref())));
    }
}
