//! Harness for tests that run cell agents, Patroni, PostgreSQL and HAProxy for real.
//!
//! Why it looks like this: PostgreSQL (hence Patroni) runs as the `postgres` user, which
//! cannot traverse `/root`, so everything it touches — the cells' data roots, the repository,
//! the copy of the walarchive binary it executes — lives in one directory under `/tmp` (mode
//! 0755). Cell agents are separate processes (the `walarchive-broker` binary) started with
//! `PR_SET_PDEATHSIG`, so they die with the test; each agent's own watchdog then kills its
//! Patroni and PostgreSQL processes, and a shell watchdog removes the directory once the test
//! process is gone (unless `WALARCHIVE_KEEP_TEST_DIRS=1`).

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use walarchive_broker::cell::{CellClient, Secret};

pub use crate::{chown_postgres, free_port, keep_dirs, postgres_ids, sh_quote, spawn_watchdog};

/// A fresh directory `/tmp/walarchive-broker-<kind>-<pid>-XXXX` (mode 0755), removed by a
/// watchdog a few seconds after this process exits (which also stops a HAProxy left running
/// there: the broker's router outlives its process by default).
pub fn test_root(kind: &str) -> PathBuf {
    let pid = std::process::id();
    let dir = tempfile::Builder::new()
        .prefix(&format!("walarchive-broker-{kind}-{pid}-"))
        .tempdir_in("/tmp")
        .expect("temp dir under /tmp")
        .keep();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    if keep_dirs() {
        eprintln!("WALARCHIVE_KEEP_TEST_DIRS: keeping {}", dir.display());
    } else {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; sleep 5; \
             for f in {d}/*/haproxy.pid; do [ -f \"$f\" ] && kill $(cat \"$f\") 2>/dev/null; done; \
             rm -rf {d}",
            d = sh_quote(&dir.to_string_lossy())
        );
        // Not waited for: it outlives this process by design.
        #[allow(clippy::zombie_processes)]
        let _ = spawn_watchdog("test directory cleanup", &script);
    }
    dir
}

/// A directory `repo` under `root` owned by postgres, and its `file://` URL: where the
/// nodes' walarchive archives.
pub fn file_repository(root: &Path) -> String {
    let dir = root.join("repo");
    std::fs::create_dir(&dir).unwrap();
    chown_postgres(&dir);
    format!("file://{}", dir.display())
}

/// The walarchive binary of this target directory (built when missing), copied into `dir`
/// with mode 0755 so that the postgres user can execute it.
pub fn walarchive_copy(dir: &Path) -> PathBuf {
    let src = crate::built_binary("walarchive-cli", "walarchive");
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::set_permissions(&bin_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dst = bin_dir.join("walarchive");
    std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    dst
}

/// Runs the walarchive copy (as root, read-only commands) and returns its stdout.
pub fn walarchive(bin: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("run walarchive");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The first of `n` consecutive ports free now for a router, in 10000-19999: below the
/// kernel's ephemeral ports (which any outgoing connection may take before HAProxy binds
/// them) and the cells' node ports (20000-31999).
pub fn router_ports(n: u16) -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    for _ in 0..200 {
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = 10000 + ((std::process::id() * 7919 + k * 97) % u32::from(10000 - n)) as u16;
        if (base..base + n).all(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} free consecutive ports in 10000-19999");
}

/// The Patroni the tests' cells run: `WALARCHIVE_PATRONI`, else the one `scripts/setup`
/// installs from pip (`/opt/walarchive-test/patroni`, 4.1.5), for every PostgreSQL major.
pub fn patroni() -> PathBuf {
    std::env::var_os("WALARCHIVE_PATRONI")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/opt/walarchive-test/patroni/bin/patroni".into())
}

/// `[postgresql.bin_dirs]` lines of the tests' cells: every supported major installed
/// (`crate::bin_dir_for`: Debian's 15, `scripts/setup`'s 16 to 18).
pub fn bin_dirs_toml() -> String {
    crate::SUPPORTED_MAJORS
        .iter()
        .map(|&m| (m, crate::bin_dir_for(m)))
        .filter(|(_, d)| d.join("postgres").is_file())
        .map(|(m, d)| format!("{m} = \"{}\"\n", d.display()))
        .collect()
}

/// Patroni's TLS towards the tests' etcd: the CA, and a client certificate whose key the
/// postgres user reads (made once per process).
pub fn patroni_etcd_tls() -> walarchive_broker::patroni::EtcdTls {
    static TLS: std::sync::OnceLock<walarchive_broker::patroni::EtcdTls> =
        std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let files = super::etcd::pki().issue("patroni");
        chown_postgres(&files.key_file);
        walarchive_broker::patroni::EtcdTls {
            ca_file: files.ca_file,
            cert_file: Some(files.cert_file),
            key_file: Some(files.key_file),
        }
    })
    .clone()
}

/// Patroni's etcd user in the tests' etcd.
pub fn patroni_etcd_credentials() -> walarchive_broker::patroni::EtcdCredentials {
    walarchive_broker::patroni::EtcdCredentials {
        username: "patroni".into(),
        password: super::etcd::etcd().patroni_password.clone(),
    }
}

/// A range of 100 ports for one cell's nodes, disjoint from every other cell's of this
/// process (cells on one machine must not pick the same port) and below the kernel's
/// ephemeral ports (where `free_port` and the routers' ports are).
fn node_ports() -> [u16; 2] {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let slot = (std::process::id() * 13 + k) % 120;
    let min = 20000 + 100 * slot as u16;
    [min, min + 99]
}

/// A cell agent running as a child process of the test.
pub struct Cell {
    /// Its name (`a`, `b`, ...).
    pub name: String,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its data root.
    pub data_root: PathBuf,
    /// Its API address.
    pub url: String,
    /// Its log (stderr), appended to across restarts.
    pub log: PathBuf,
    /// The API token.
    pub token: Secret,
    /// The agent's process (behind a lock so that a test can kill and restart it while
    /// other code holds `&Cell`).
    child: std::sync::Mutex<Option<Child>>,
}

impl Cell {
    /// Writes the configuration of cell `name` under `root` and starts the agent.
    pub fn start(root: &Path, name: &str) -> Cell {
        let port = free_port();
        let data_root = root.join(format!("cell-{name}"));
        let config = root.join(format!("cell-{name}.toml"));
        let [min, max] = node_ports();
        let tls = super::etcd::pki().issue(&format!("cell-{name}-{port}"));
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata_root = \"{}\"\nports = [{min}, {max}]\n\
                 patroni = \"{}\"\n\
                 [postgresql.bin_dirs]\n{}\
                 [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
                data_root.display(),
                patroni().display(),
                bin_dirs_toml(),
                tls.cert_file.display(),
                tls.key_file.display(),
                tls.ca_file.display(),
            ),
        )
        .unwrap();
        let cell = Cell {
            name: name.to_string(),
            config,
            data_root,
            url: format!("https://127.0.0.1:{port}"),
            log: root.join(format!("cell-{name}.log")),
            token: Secret::generate(),
            child: std::sync::Mutex::new(None),
        };
        cell.spawn();
        cell
    }

    fn spawn(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(crate::built_binary(
            "walarchive-broker",
            "walarchive-broker",
        ));
        cmd.arg("cell")
            .arg("--config")
            .arg(&self.config)
            .env("WALARCHIVE_CELL_TOKEN", self.token.expose())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        walarchive_broker::process::die_with_parent(&mut cmd);
        *self.child.lock().unwrap() = Some(cmd.spawn().expect("start walarchive-broker cell"));
    }

    /// A client for this agent.
    pub fn client(&self) -> CellClient {
        CellClient::new(
            &self.url,
            self.token.clone(),
            Some(&super::etcd::pki().broker),
        )
        .unwrap()
    }

    /// Waits until the agent answers.
    pub async fn wait_ready(&self) {
        let client = self.client();
        let start = Instant::now();
        while client.nodes().await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "cell {} not ready:\n{}",
                self.name,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs the agent (its watchdog then takes its nodes down).
    pub fn kill(&self) {
        let child = self.child.lock().unwrap().take();
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The agent's process id while it runs (to stop it with SIGSTOP: an agent that hangs
    /// rather than one that is gone).
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// Starts the agent again with the same configuration and token.
    pub fn restart(&self) {
        self.kill();
        self.spawn();
    }

    /// The last `n` lines of the agent's log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    /// The last `n` lines of node `node`'s Patroni log.
    pub fn patroni_log_tail(&self, node: &str, n: usize) -> String {
        tail(&self.data_root.join(node).join("patroni.log"), n)
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A session on `conninfo` (key=value or URI), its connection driven in the background.
pub async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The connection string of `user` on 127.0.0.1:`port`, database `postgres`.
pub fn conninfo(user: &str, port: u16, password: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user={user} password={password} dbname=postgres connect_timeout=3"
    )
}

/// The superuser's connection string for 127.0.0.1:`port` (which no node accepts: the
/// superuser only exists on the nodes' Unix sockets).
pub fn superuser(port: u16, password: &str) -> String {
    conninfo("postgres", port, password)
}

/// Runs `sql` as the superuser on the node of `cell` listening on `port`, over the cell's
/// Unix socket as the postgres OS user (the only way to the superuser).
pub fn local_sql(cell: &Cell, port: u16, sql: &str) -> Result<String, String> {
    let out = Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            "/usr/lib/postgresql/15/bin/psql",
            "-X",
            "-A",
            "-t",
            "-q",
        ])
        .arg("-h")
        .arg(cell.data_root.join(".run"))
        .args(["-p", &port.to_string(), "-d", "postgres", "-c", sql])
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A session of `conninfo` (key=value or URI) on a writable primary (none while there is
/// none).
pub async fn primary_as(conninfo: String) -> Option<tokio_postgres::Client> {
    let client = connect(&conninfo).await.ok()?;
    let row = client
        .query_one("select pg_is_in_recovery()", &[])
        .await
        .ok()?;
    (!row.get::<_, bool>(0)).then_some(client)
}

/// Polls `f` every 200 ms until it returns `Some`, panicking with `what` and `diag()` after
/// `timeout`.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut f: F,
    diag: impl Fn() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            eprintln!("{what}: {:.1} s", start.elapsed().as_secs_f64());
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", diag());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
