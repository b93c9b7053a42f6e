//! Broker configurations for the tests that run a worker on real cells.
//!
//! Why one place: every such test needs the same sections (credentials, etcd, cells, router,
//! nodes), and they grow with every security setting (TLS, etcd authentication, the secrets'
//! key); written once here, each test only says what differs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::cells::Cell;
use super::etcd::etcd;
use super::osb::PASSWORD;

/// What differs between the tests' brokers.
pub struct BrokerToml<'a> {
    /// Directory for the broker's files (password, tokens, HAProxy's directory `haproxy/`).
    pub dir: PathBuf,
    /// The cells, with their zones.
    pub cells: Vec<(&'a Cell, &'a str)>,
    /// `repository.base`.
    pub base: String,
    /// `repository.walarchive_config`.
    pub walarchive_config: Option<PathBuf>,
    /// `nodes.walarchive`.
    pub walarchive: PathBuf,
    /// The service id.
    pub service: String,
    /// The plan id (node count 2 unless [`BrokerToml::node_count`] says otherwise).
    pub plan: String,
    /// The plan's node count.
    pub node_count: u8,
    /// `listen`, when the test serves the API over the network.
    pub listen: Option<u16>,
    /// First router port (default: a free port).
    pub port_min: Option<u16>,
    /// Number of router ports.
    pub router_ports: u16,
    /// `[backups]` interval and retain.
    pub backups: (&'a str, u32),
    /// `[worker]` poll interval and operation timeout.
    pub worker: (&'a str, &'a str),
    /// Whether HAProxy outlives the broker.
    pub outlive_router: bool,
    /// `worker.backoff_max`.
    pub backoff_max: &'a str,
    /// Patroni's `ttl`, `loop_wait` and `retry_timeout` (quick failover by default).
    pub timing: (u32, u32, u32),
}

impl<'a> BrokerToml<'a> {
    /// Defaults for a broker whose files go into `dir` (created), archiving into `base`.
    pub fn new(dir: &Path, base: &str, walarchive: &Path) -> BrokerToml<'a> {
        std::fs::create_dir_all(dir).unwrap();
        BrokerToml {
            dir: dir.to_path_buf(),
            cells: Vec::new(),
            base: base.to_string(),
            walarchive_config: None,
            walarchive: walarchive.to_path_buf(),
            service: "svc-1".into(),
            plan: "plan-1".into(),
            node_count: 2,
            listen: None,
            port_min: None,
            // Two per instance: its own and its read-only one.
            router_ports: 12,
            backups: ("1d", 7),
            worker: ("2s", "4m"),
            outlive_router: true,
            backoff_max: "5m",
            timing: (10, 2, 4),
        }
    }

    /// The configuration text, with the broker's state under `prefix` in the tests' etcd.
    pub fn render(&self, prefix: &str) -> String {
        let pw = self.dir.join("password");
        std::fs::write(&pw, PASSWORD).unwrap();
        let key = self.dir.join("secrets.key");
        if !key.exists() {
            std::fs::write(&key, walarchive_broker::secrets::Keyring::generate_key()).unwrap();
        }
        let mut cells = String::new();
        for (c, zone) in &self.cells {
            let tf = self.dir.join(format!("token-{}", c.name));
            std::fs::write(&tf, c.token.expose()).unwrap();
            let _ = write!(
                cells,
                "[[cells]]\nname = \"{}\"\nurl = \"{}\"\nzone = \"{zone}\"\nhost = \"127.0.0.1\"\ntoken_file = \"{}\"\n",
                c.name,
                c.url,
                tf.display()
            );
        }
        let listen = self
            .listen
            .map(|p| format!("listen = \"127.0.0.1:{p}\"\n"))
            .unwrap_or_default();
        let walarchive_config = self
            .walarchive_config
            .as_ref()
            .map(|p| format!("walarchive_config = \"{}\"\n", p.display()))
            .unwrap_or_default();
        let port_min = self
            .port_min
            .unwrap_or_else(|| super::cells::router_ports(self.router_ports));
        let pki = super::etcd::pki();
        let patroni = super::cells::patroni_etcd_tls();
        format!(
            r#"{listen}archive_timeout = "60s"
[tls]
cert_file = "{broker_cert}"
key_file = "{broker_key}"
ca_file = "{ca}"
[secrets]
key_file = "{key}"
[credentials]
username = "{user}"
password_file = "{pw}"
[service]
id = "{service}"
name = "pg"
description = "HA PostgreSQL"
[[service.plans]]
id = "{plan}"
name = "ha"
description = "nodes"
node_count = {node_count}
[repository]
base = "{base}"
{walarchive_config}[etcd]
{etcd}prefix = "{prefix}"
{cells}
[router]
host = "127.0.0.1"
bind_address = "127.0.0.1"
source_address = "127.0.0.2"
port_min = {port_min}
port_max = {port_max}
haproxy_config = "{haproxy}/haproxy.cfg"
outlive_broker = {outlive}
[backups]
interval = "{interval}"
retain = {retain}
[nodes]
walarchive = "{bin}"
ttl = {ttl}
loop_wait = {loop_wait}
retry_timeout = {retry_timeout}
wal_segsize_mb = 1
etcd_ca_file = "{ca}"
etcd_cert_file = "{patroni_cert}"
etcd_key_file = "{patroni_key}"
etcd_username = "patroni"
etcd_password_file = "{patroni_password}"
[worker]
poll_interval = "{poll}"
operation_timeout = "{timeout}"
backoff_max = "{backoff_max}"
"#,
            user = super::osb::USER,
            pw = pw.display(),
            key = key.display(),
            service = self.service,
            plan = self.plan,
            node_count = self.node_count,
            base = self.base,
            etcd = etcd().config_lines(),
            broker_cert = pki.broker.cert_file.display(),
            broker_key = pki.broker.key_file.display(),
            ca = pki.ca_file().display(),
            patroni_cert = patroni.cert_file.as_ref().unwrap().display(),
            patroni_key = patroni.key_file.as_ref().unwrap().display(),
            patroni_password = etcd().password_file("patroni").display(),
            port_max = port_min + self.router_ports - 1,
            haproxy = self.dir.join("haproxy").display(),
            outlive = self.outlive_router,
            interval = self.backups.0,
            retain = self.backups.1,
            bin = self.walarchive.display(),
            poll = self.worker.0,
            timeout = self.worker.1,
            backoff_max = self.backoff_max,
            ttl = self.timing.0,
            loop_wait = self.timing.1,
            retry_timeout = self.timing.2,
        )
    }
}
