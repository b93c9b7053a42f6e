//! Single-machine mode (`walarchive-broker dev`): the whole system on one host, for trying the
//! broker out, for the end-to-end test and for the benchmark.
//!
//! Why child processes rather than one process: the production topology is an etcd, a broker
//! and one cell agent per machine, and the failure the system is built for is losing a
//! machine. Running each part as its own process (this same binary, `cell` and `serve`) keeps
//! that topology, so killing a cell agent here has the same effect as losing a machine there:
//! its watchdog takes its Patroni and PostgreSQL down and the cluster fails over.
//!
//! Why everything lives in one directory under `/tmp` (mode 0755): PostgreSQL runs as the
//! `postgres` user, which must reach its data, the repository and the walarchive binary it
//! executes for archiving (a copy, since the build's target directory is usually under a home
//! directory it cannot traverse). The generated secrets (the broker's password, the cells'
//! tokens) are in `secrets/` (mode 0700, files 0600) and reach the children through those
//! files, never their command lines.
//!
//! Children are started in process groups of their own (so a Ctrl-C on the terminal reaches
//! only this process, which then stops them in order: broker, cells, etcd) and with
//! `PR_SET_PDEATHSIG` ([`crate::process::die_with_parent`]), so none outlives this process
//! even if it is killed.

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod client;

pub use client::{demo, write_probe, Osb};

use crate::cell::{CellClient, NodeStatus};
use crate::process::{self, Signal};
use crate::secrets::Secret;
use crate::tls::{ThrowawayCa, TlsFiles};

/// The service id of the single-machine mode.
pub const SERVICE_ID: &str = "walarchive-dev-service";
/// The one-node plan.
pub const PLAN_SINGLE: &str = "walarchive-dev-single";
/// The two-node plan.
pub const PLAN_HA: &str = "walarchive-dev-ha";
/// The OSB version the client speaks.
pub const OSB_VERSION: &str = "2.17";

/// Errors of the single-machine mode.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Something did not start or did not answer as expected.
    #[error("{0}")]
    Failed(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DevError {
    let what = what.into();
    move |source| DevError::Io { what, source }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Directory of everything (created; default: a fresh one under `/tmp`, removed on stop).
    pub dir: Option<PathBuf>,
    /// Number of cells (zones `z1` to `zN`).
    pub cells: usize,
    /// The walarchive executable to copy (default: next to `broker_exe`, or `WALARCHIVE_BIN`).
    pub walarchive: Option<PathBuf>,
    /// The walarchive-broker executable run as `cell` and `serve` (default: this one).
    pub broker_exe: Option<PathBuf>,
    /// The etcd executable.
    pub etcd: PathBuf,
    /// The Patroni the cells run: `WALARCHIVE_PATRONI`, else the 4.x `scripts/setup`
    /// installs (`/opt/walarchive-test/patroni`) when it is there, else `/usr/bin/patroni`.
    pub patroni: PathBuf,
}

/// Where `scripts/setup` installs the majors Debian does not package.
const SETUP_PG_DIR: &str = "/opt/walarchive-test/pg";

/// `[postgresql.bin_dirs]` of the single-machine mode's cells: each supported major found
/// in `/usr/lib/postgresql/<major>/bin`, else where `scripts/setup` puts it.
fn dev_bin_dirs() -> String {
    let mut text = String::from("\n[postgresql.bin_dirs]\n");
    for major in crate::pgmajor::SUPPORTED {
        let found = [
            PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
            PathBuf::from(format!("{SETUP_PG_DIR}/{major}/bin")),
        ]
        .into_iter()
        .find(|d| d.join("postgres").is_file());
        if let Some(d) = found {
            let _ = writeln!(text, "{major} = {:?}", d.display().to_string());
        }
    }
    text
}

impl Default for DevOptions {
    fn default() -> Self {
        DevOptions {
            dir: None,
            cells: 3,
            walarchive: None,
            broker_exe: None,
            etcd: std::env::var_os("WALARCHIVE_ETCD")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/usr/bin/etcd".into()),
            patroni: std::env::var_os("WALARCHIVE_PATRONI")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    let setup = PathBuf::from("/opt/walarchive-test/patroni/bin/patroni");
                    if setup.is_file() {
                        setup
                    } else {
                        "/usr/bin/patroni".into()
                    }
                }),
        }
    }
}

/// One cell agent of the single-machine mode.
#[derive(Debug)]
pub struct DevCell {
    /// Its name (`cell-z1`, ...).
    pub name: String,
    /// Its zone.
    pub zone: String,
    /// Its API URL.
    pub url: String,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its log.
    pub log: PathBuf,
    token: Secret,
    tls: TlsFiles,
    child: Option<Child>,
}

impl DevCell {
    /// A client for the agent (over TLS, presenting the broker's certificate).
    pub fn client(&self) -> Result<CellClient, DevError> {
        CellClient::new(&self.url, self.token.clone(), Some(&self.tls))
            .map_err(|e| DevError::Failed(format!("cell {}: {e}", self.name)))
    }
}

/// The running system (see the module docs). Stop it with [`Dev::stop`].
#[derive(Debug)]
pub struct Dev {
    /// Its directory.
    pub dir: PathBuf,
    /// The broker's OSB API URL.
    pub broker_url: String,
    /// The broker's basic-auth user.
    pub username: String,
    /// The broker's basic-auth password.
    pub password: Secret,
    /// The router's port range.
    pub router_ports: (u16, u16),
    /// The cells.
    pub cells: Vec<DevCell>,
    /// The broker's certificate, and the throwaway CA every certificate here is signed by.
    pub tls: TlsFiles,
    etcd_tls: TlsFiles,
    remove_dir: bool,
    broker_exe: PathBuf,
    etcd_bin: PathBuf,
    walarchive_src: PathBuf,
    cell_user: String,
    etcd: Option<Child>,
    broker: Option<Child>,
}

fn free_port() -> Result<u16, DevError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io_err("find a free port"))
}

/// `n` consecutive ports that are free now, below the kernel's ephemeral ports: a port in
/// that range may be taken, between this choice and the server binding it, by any outgoing
/// connection of the machine.
fn free_range(n: u16) -> Result<(u16, u16), DevError> {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (20000u16, ephemeral.max(20000 + 2 * n));
    let span = high - low - n;
    let mut seed = [0u8; 2];
    getrandom::fill(&mut seed).map_err(|e| DevError::Failed(e.to_string()))?;
    let mut base = low + u16::from_le_bytes(seed) % span;
    for _ in 0..50 {
        let free = (base..base + n).all(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok());
        if free {
            return Ok((base, base + n - 1));
        }
        base = low + (base - low + 97 * n) % span;
    }
    Err(DevError::Failed(format!(
        "no range of {n} free ports found"
    )))
}

fn write_secret(path: &Path, value: &str) -> Result<(), DevError> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("create {}", path.display())))?;
    io::Write::write_all(&mut f, value.as_bytes())
        .map_err(io_err(format!("write {}", path.display())))
}

fn mkdir(path: &Path, mode: u32) -> Result<(), DevError> {
    std::fs::create_dir_all(path).map_err(io_err(format!("create {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))
}

fn user_ids(user: &str) -> Result<(u32, u32), DevError> {
    process::user_ids(user)
        .map_err(io_err(format!("look up OS user {user:?}")))?
        .ok_or_else(|| DevError::Failed(format!("no OS user {user:?} (run scripts/setup)")))
}

/// Starts `cmd` in its own process group, killed when this process dies.
fn spawn_child(mut cmd: Command, log: &Path) -> Result<Child, DevError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(format!("open {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io_err(format!("open {}", log.display())))?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    process::die_with_parent(&mut cmd);
    cmd.spawn()
        .map_err(io_err(format!("start {:?}", cmd.get_program())))
}

async fn stop_child(child: &mut Option<Child>, grace: Duration) {
    let Some(mut c) = child.take() else { return };
    process::signal(c.id(), Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = c.kill();
    let _ = c.wait();
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Dev {
    /// Creates the directory, copies walarchive and writes every configuration file, without
    /// starting anything yet.
    pub fn prepare(opts: &DevOptions) -> Result<Dev, DevError> {
        if opts.cells == 0 {
            return Err(DevError::Failed("--cells must be at least 1".into()));
        }
        let broker_exe = match &opts.broker_exe {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(io_err("find this executable"))?,
        };
        let walarchive_src = match opts
            .walarchive
            .clone()
            .or_else(|| std::env::var_os("WALARCHIVE_BIN").map(PathBuf::from))
        {
            Some(p) => p,
            None => broker_exe
                .parent()
                .map(|d| d.join("walarchive"))
                .ok_or_else(|| DevError::Failed("no directory for walarchive".into()))?,
        };
        if !walarchive_src.is_file() {
            return Err(DevError::Failed(format!(
                "walarchive not found at {} (build it: cargo build --bin walarchive, or pass --walarchive PATH / WALARCHIVE_BIN)",
                walarchive_src.display()
            )));
        }
        if !opts.etcd.is_file() {
            return Err(DevError::Failed(format!(
                "etcd not found at {} (run scripts/setup: apt etcd-server)",
                opts.etcd.display()
            )));
        }
        let (dir, remove_dir) = match &opts.dir {
            Some(d) => (d.clone(), false),
            None => {
                let mut r = [0u8; 4];
                getrandom::fill(&mut r).map_err(|e| DevError::Failed(e.to_string()))?;
                let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
                (
                    PathBuf::from(format!(
                        "/tmp/walarchive-broker-dev-{}-{hex}",
                        std::process::id()
                    )),
                    true,
                )
            }
        };
        let dir = if dir.is_absolute() {
            dir
        } else {
            std::env::current_dir()
                .map_err(io_err("current directory"))?
                .join(dir)
        };
        if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
            return Err(DevError::Failed(format!(
                "{} is not empty: dev mode starts afresh in a new or empty directory",
                dir.display()
            )));
        }
        mkdir(&dir, 0o755)?;
        let cell_user = if process::effective_user_is_root() {
            "postgres".to_string()
        } else {
            std::env::var("USER").unwrap_or_else(|_| "postgres".into())
        };
        let (uid, gid) = user_ids(&cell_user)?;
        mkdir(&dir.join("secrets"), 0o700)?;
        mkdir(&dir.join("bin"), 0o755)?;
        mkdir(&dir.join("haproxy"), 0o755)?;
        let repo = dir.join("repo");
        mkdir(&repo, 0o755)?;
        std::os::unix::fs::chown(&repo, Some(uid), Some(gid))
            .map_err(io_err(format!("chown {}", repo.display())))?;
        let walarchive = dir.join("bin").join("walarchive");
        std::fs::copy(&walarchive_src, &walarchive).map_err(io_err(format!(
            "copy {} to {}",
            walarchive_src.display(),
            walarchive.display()
        )))?;
        std::fs::set_permissions(&walarchive, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod walarchive"))?;

        // TLS everywhere, with a CA made for this run: the broker's API and its client
        // certificate, each cell's API, etcd, and Patroni's client certificate for etcd.
        let tls_dir = dir.join("tls");
        mkdir(&tls_dir, 0o755)?;
        let tls_err = |e: crate::tls::TlsError| DevError::Failed(e.to_string());
        let ca = ThrowawayCa::new(&tls_dir, "walarchive-broker dev CA").map_err(tls_err)?;
        let broker_tls = ca.issue("broker").map_err(tls_err)?;
        let etcd_tls = ca.issue("etcd-server").map_err(tls_err)?;
        let patroni_tls = ca.issue("patroni").map_err(tls_err)?;
        std::os::unix::fs::chown(&patroni_tls.key_file, Some(uid), Some(gid))
            .map_err(io_err(format!("chown {}", patroni_tls.key_file.display())))?;
        let password = Secret::generate();
        write_secret(&dir.join("secrets/broker-password"), password.expose())?;
        write_secret(
            &dir.join("secrets/secrets.key"),
            &crate::secrets::Keyring::generate_key(),
        )?;
        // etcd's users (authentication goes on when etcd has started).
        for user in ["root", "broker", "patroni"] {
            write_secret(
                &dir.join(format!("secrets/etcd-{user}.password")),
                Secret::generate().expose(),
            )?;
        }
        let broker_port = free_port()?;
        let etcd_port = free_port()?;
        // The router's 20 ports, then a range of 100 for each cell's nodes: the cells share
        // this machine, and two picking one port would break both nodes.
        let ports = free_range(20 + 100 * opts.cells as u16)?;
        let router_ports = (ports.0, ports.0 + 19);
        let node_ports = (ports.0 + 20, ports.1);
        let mut cells = Vec::new();
        let mut cells_toml = String::new();
        for i in 1..=opts.cells {
            let ports = node_ports.0 + 100 * (i as u16 - 1);
            let zone = format!("z{i}");
            let name = format!("cell-{zone}");
            let port = free_port()?;
            let token = Secret::generate();
            let token_file = dir.join(format!("secrets/{name}.token"));
            write_secret(&token_file, token.expose())?;
            let config = dir.join(format!("{name}.toml"));
            let cell_tls = ca.issue(&name).map_err(tls_err)?;
            let text = format!(
                "# walarchive-broker dev: cell agent {name}\nlisten = \"127.0.0.1:{port}\"\ndata_root = {:?}\ntoken_file = {:?}\nuser = {:?}\nports = [{ports}, {}]\n",
                dir.join(&name).display().to_string(),
                token_file.display().to_string(),
                cell_user,
                ports + 99,
            ) + &format!("patroni = {:?}\n", opts.patroni.display().to_string())
                + &dev_bin_dirs()
                + &format!(
                "\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nca_file = {:?}\n",
                cell_tls.cert_file.display().to_string(),
                cell_tls.key_file.display().to_string(),
                cell_tls.ca_file.display().to_string(),
            );
            std::fs::write(&config, text).map_err(io_err(format!("write {}", config.display())))?;
            let url = format!("https://127.0.0.1:{port}");
            let _ = write!(
                cells_toml,
                "\n[[cells]]\nname = \"{name}\"\nurl = \"{url}\"\nzone = \"{zone}\"\ntoken_file = {:?}\n",
                token_file.display().to_string()
            );
            cells.push(DevCell {
                name: name.clone(),
                zone,
                url,
                config,
                log: dir.join(format!("{name}.log")),
                token,
                tls: broker_tls.clone(),
                child: None,
            });
        }
        let broker_toml = format!(
            r#"# walarchive-broker dev: the broker (generated; the password is in secrets/)
listen = "127.0.0.1:{broker_port}"
archive_timeout = "60s"

[credentials]
username = "broker"
password_file = {pw:?}

[secrets]
key_file = {key:?}

[tls]
cert_file = {broker_cert:?}
key_file = {broker_key:?}
ca_file = {ca:?}

[service]
id = "{SERVICE_ID}"
name = "walarchive-postgresql-dev"
description = "Highly available PostgreSQL on this machine (walarchive-broker dev)"
tags = ["postgresql", "dev"]

[[service.plans]]
id = "{PLAN_SINGLE}"
name = "single"
description = "One PostgreSQL node"
node_count = 1

[[service.plans]]
id = "{PLAN_HA}"
name = "ha"
description = "Two PostgreSQL nodes in different zones with automatic failover"
node_count = 2

[repository]
base = "file://{repo}"

[etcd]
endpoints = ["https://127.0.0.1:{etcd_port}"]
prefix = "/walarchive-broker"
ca_file = {ca:?}
cert_file = {broker_cert:?}
key_file = {broker_key:?}
username = "walarchive-broker"
password_file = {etcd_broker_pw:?}

[router]
host = "127.0.0.1"
port_min = {pmin}
port_max = {pmax}
bind_address = "127.0.0.1"
# The cells are on this machine too: the router connects from an address of its own.
source_address = "127.0.0.2"
haproxy_config = {haproxy:?}
outlive_broker = false

[nodes]
walarchive = {walarchive:?}
synchronous = true
ttl = 10
loop_wait = 2
retry_timeout = 4
wal_segsize_mb = 1
etcd_ca_file = {ca:?}
etcd_cert_file = {patroni_cert:?}
etcd_key_file = {patroni_key:?}
etcd_username = "patroni"
etcd_password_file = {etcd_patroni_pw:?}

[worker]
poll_interval = "2s"
{cells_toml}"#,
            pw = dir.join("secrets/broker-password").display().to_string(),
            key = dir.join("secrets/secrets.key").display().to_string(),
            etcd_broker_pw = dir
                .join("secrets/etcd-broker.password")
                .display()
                .to_string(),
            etcd_patroni_pw = dir
                .join("secrets/etcd-patroni.password")
                .display()
                .to_string(),
            repo = repo.display(),
            pmin = router_ports.0,
            pmax = router_ports.1,
            haproxy = dir.join("haproxy/haproxy.cfg").display().to_string(),
            walarchive = walarchive.display().to_string(),
            ca = ca.ca_file().display().to_string(),
            broker_cert = broker_tls.cert_file.display().to_string(),
            broker_key = broker_tls.key_file.display().to_string(),
            patroni_cert = patroni_tls.cert_file.display().to_string(),
            patroni_key = patroni_tls.key_file.display().to_string(),
        );
        let broker_config = dir.join("broker.toml");
        std::fs::write(&broker_config, &broker_toml)
            .map_err(io_err(format!("write {}", broker_config.display())))?;
        crate::config::BrokerConfig::load(&broker_config)
            .map_err(|e| DevError::Failed(format!("the generated configuration: {e}")))?;
        std::fs::write(dir.join("etcd.port"), etcd_port.to_string())
            .map_err(io_err("write etcd.port"))?;
        Ok(Dev {
            dir,
            broker_url: format!("https://127.0.0.1:{broker_port}"),
            tls: broker_tls,
            etcd_tls,
            username: "broker".into(),
            password,
            router_ports,
            cells,
            remove_dir,
            broker_exe,
            etcd_bin: opts.etcd.clone(),
            walarchive_src,
            cell_user,
            etcd: None,
            broker: None,
        })
    }

    fn etcd_port(&self) -> u16 {
        std::fs::read_to_string(self.dir.join("etcd.port"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(2379)
    }

    /// Starts etcd, the cell agents and the broker, and waits until each answers.
    pub async fn start(&mut self) -> Result<(), DevError> {
        let http = crate::tls::client_builder(
            reqwest::Client::builder().timeout(Duration::from_secs(5)),
            &self.tls,
        )
        .and_then(|b| {
            b.build()
                .map_err(|e| crate::tls::TlsError::Config(e.to_string()))
        })
        .map_err(|e| DevError::Failed(e.to_string()))?;
        // etcd: TLS for clients, who must present a certificate of the dev CA.
        let port = self.etcd_port();
        let peer = free_port()?;
        let client_url = format!("https://127.0.0.1:{port}");

        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new(&self.etcd_bin);
        cmd.args(["--name", "dev"])
            .arg("--data-dir")
            .arg(self.dir.join("etcd"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("dev={peer_url}")])
            .args(["--initial-cluster-state", "new"])
            .arg("--cert-file")
            .arg(&self.etcd_tls.cert_file)
            .arg("--key-file")
            .arg(&self.etcd_tls.key_file)
            .arg("--trusted-ca-file")
            .arg(&self.tls.ca_file)
            .arg("--client-cert-auth")
            .args(["--logger", "zap", "--log-level", "warn"])
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
        let log = self.dir.join("etcd.log");
        self.etcd = Some(spawn_child(cmd, &log)?);
        let health = format!("{client_url}/health");
        self.wait("etcd", &log, Duration::from_secs(60), || {
            let (http, url) = (http.clone(), health.clone());
            async move {
                let r = http.get(&url).send().await.ok()?;
                let t = r.text().await.ok()?;
                t.contains("true").then_some(())
            }
        })
        .await?;

        // etcd's authentication: the broker's user reaches the broker's prefix (Patroni's
        // namespace included, to remove a deleted instance's keys), Patroni's only its
        // namespace.
        let read = |user: &str| -> Result<Secret, DevError> {
            let f = self.dir.join(format!("secrets/etcd-{user}.password"));
            Ok(Secret::new(
                std::fs::read_to_string(&f).map_err(io_err(format!("read {}", f.display())))?,
            ))
        };
        let (root, broker, patroni) = (read("root")?, read("broker")?, read("patroni")?);
        let mut opts = crate::etcd::EtcdOptions::new(Duration::from_secs(5));
        opts.ca_file = Some(self.tls.ca_file.clone());
        opts.identity = Some((self.tls.cert_file.clone(), self.tls.key_file.clone()));
        crate::etcd::EtcdClient::with_options(std::slice::from_ref(&client_url), opts)
            .map_err(|e| DevError::Failed(e.to_string()))?
            .enable_auth(
                &root,
                &[
                    crate::etcd::EtcdUser {
                        name: "walarchive-broker",
                        password: &broker,
                        prefixes: &["/walarchive-broker/"],
                    },
                    crate::etcd::EtcdUser {
                        name: "patroni",
                        password: &patroni,
                        prefixes: &["/walarchive-broker/patroni/"],
                    },
                ],
            )
            .await
            .map_err(|e| DevError::Failed(format!("enable etcd's authentication: {e}")))?;

        // cells
        for i in 0..self.cells.len() {
            self.spawn_cell(i)?;
        }
        for i in 0..self.cells.len() {
            let client = self.cells[i].client()?;
            let log = self.cells[i].log.clone();
            let name = self.cells[i].name.clone();
            self.wait(&name, &log, Duration::from_secs(30), || {
                let c = client.clone();
                async move { c.nodes().await.ok().map(|_| ()) }
            })
            .await?;
        }

        // the broker
        let mut cmd = Command::new(&self.broker_exe);
        cmd.arg("serve")
            .arg("--config")
            .arg(self.dir.join("broker.toml"));
        let log = self.dir.join("broker.log");
        self.broker = Some(spawn_child(cmd, &log)?);
        let osb = self.osb();
        self.wait("the broker", &log, Duration::from_secs(30), || {
            let osb = osb.clone();
            async move { osb.get("/v2/catalog").await.ok().map(|_| ()) }
        })
        .await
    }

    fn spawn_cell(&mut self, i: usize) -> Result<(), DevError> {
        let c = &mut self.cells[i];
        let mut cmd = Command::new(&self.broker_exe);
        cmd.arg("cell").arg("--config").arg(&c.config);
        c.child = Some(spawn_child(cmd, &c.log)?);
        Ok(())
    }

    async fn wait<F, Fut>(
        &mut self,
        what: &str,
        log: &Path,
        timeout: Duration,
        mut f: F,
    ) -> Result<(), DevError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<()>>,
    {
        let start = Instant::now();
        loop {
            if f().await.is_some() {
                return Ok(());
            }
            let exited = [&mut self.etcd, &mut self.broker]
                .into_iter()
                .chain(self.cells.iter_mut().map(|c| &mut c.child))
                .filter_map(|c| c.as_mut())
                .any(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || start.elapsed() > timeout {
                let why = if exited {
                    "a process exited"
                } else {
                    "timed out"
                };
                return Err(DevError::Failed(format!(
                    "{what} did not start ({why}); end of {}:\n{}",
                    log.display(),
                    tail(log, 20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A client of the broker's OSB API.
    pub fn osb(&self) -> Osb {
        Osb {
            http: crate::tls::client_builder(
                reqwest::Client::builder().timeout(Duration::from_secs(30)),
                &self.tls,
            )
            .expect("the dev certificates")
            .build()
            .expect("an HTTP client"),
            base: self.broker_url.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
        }
    }

    /// The walarchive executable that was copied.
    pub fn walarchive_source(&self) -> &Path {
        &self.walarchive_src
    }

    /// The OS user the nodes run as.
    pub fn node_user(&self) -> &str {
        &self.cell_user
    }

    /// The node of `instance_id` that leads now, with its cell's index.
    pub async fn leader(&self, instance_id: &str) -> Option<(usize, NodeStatus)> {
        for (i, c) in self.cells.iter().enumerate() {
            let Ok(client) = c.client() else { continue };
            let Ok(nodes) = client.nodes().await else {
                continue;
            };
            if let Some(n) = nodes
                .into_iter()
                .find(|n| n.instance_id == instance_id && n.is_leader())
            {
                return Some((i, n));
            }
        }
        None
    }

    /// SIGKILLs cell `i`'s agent: like losing that machine.
    pub fn kill_cell(&mut self, i: usize) {
        if let Some(mut c) = self.cells[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts cell `i`'s agent again (it re-adopts its nodes) and waits until it answers.
    pub async fn restart_cell(&mut self, i: usize) -> Result<(), DevError> {
        self.kill_cell(i);
        self.spawn_cell(i)?;
        let client = self.cells[i].client()?;
        let (log, name) = (self.cells[i].log.clone(), self.cells[i].name.clone());
        self.wait(&name, &log, Duration::from_secs(30), || {
            let c = client.clone();
            async move { c.nodes().await.ok().map(|_| ()) }
        })
        .await
    }

    /// Stops the broker, then the cells (which stop their Patroni and PostgreSQL), then
    /// etcd; removes the directory when it was a temporary one.
    pub async fn stop(mut self) {
        stop_child(&mut self.broker, Duration::from_secs(15)).await;
        let mut cells: Vec<Option<Child>> = self.cells.iter_mut().map(|c| c.child.take()).collect();
        for c in cells.iter_mut().flatten() {
            process::signal(c.id(), Signal::SIGTERM);
        }
        for c in cells.iter_mut() {
            stop_child(c, Duration::from_secs(60)).await;
        }
        stop_child(&mut self.etcd, Duration::from_secs(10)).await;
        // The cells' watchdogs check every second that their agent is gone.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// What to print for the user: where things are, the broker's URL and credentials.
    pub fn banner(&self) -> String {
        let pw = self.password.expose();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "walarchive-broker dev is running in {}",
            self.dir.display()
        );
        let _ = writeln!(
            s,
            "  etcd 127.0.0.1:{}, {} cell agents ({}), router ports {}-{}",
            self.etcd_port(),
            self.cells.len(),
            self.cells
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            self.router_ports.0,
            self.router_ports.1
        );
        let _ = writeln!(s, "  logs: {}/*.log", self.dir.display());
        let _ = writeln!(s, "  OSB API:  {}", self.broker_url);
        let _ = writeln!(s, "  username: {}", self.username);
        let _ = writeln!(
            s,
            "  password: {pw}   (shown once; also in secrets/broker-password)"
        );
        let _ = writeln!(
            s,
            "  try: curl --cacert {} -su '{}:{pw}' -H 'X-Broker-API-Version: {OSB_VERSION}' {}/v2/catalog",
            self.tls.ca_file.display(),
            self.username,
            self.broker_url
        );
        s
    }
}
