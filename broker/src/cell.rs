//! The cell agent: runs the Patroni nodes the broker places on one machine.
//!
//! The broker never starts processes itself; it asks the cell agent of each machine (a
//! "cell") over HTTP to create, inspect, back up and remove nodes. Keeping process management
//! in one small agent per machine means the broker can run anywhere, and a machine's nodes
//! live and die with that machine's agent:
//!
//! * **Patroni dies with the agent.** Each Patroni is started with `PR_SET_PDEATHSIG`
//!   (SIGKILL), from one dedicated thread that never exits ([`crate::process::spawn_tied`]).
//!   Patroni starts PostgreSQL in a session of its own, so a small shell watchdog
//!   ([`crate::process::start_watchdog`]), started by the agent in its own process group, kills the PostgreSQL process groups (and any Patroni
//!   left) as soon as the agent's PID is gone. Killing an agent with SIGKILL thus takes its
//!   whole machine's databases down, which is what tests use to simulate a lost machine;
//!   Patroni then elects another leader.
//! * **Nodes are re-adopted.** Everything about a node lives in `<data_root>/<node>/`
//!   (`node.json` with its spec, ports and REST API password, mode 0600; `patroni.yml`;
//!   the data directory; `patroni.log`). An agent that starts again restarts Patroni for every
//!   node there, on the same ports, and Patroni rejoins as a replica (pg_rewind or re-clone).
//! * **Supervision with backoff.** A Patroni that exits is restarted after 1 s, doubling up to
//!   30 s, reset after a minute of running.
//! * **Secrets** (database passwords, storage credentials, the API token) are only in files of
//!   mode 0600, in Patroni's environment, and in memory wrapped in [`Secret`]: never on a
//!   command line, in a log line or in `Debug` output.
//!
//! The wire types and the broker's client are in [`client`], the HTTP server and its
//! authentication in `server`, the supervision of each node's Patroni in `supervise`, process
//! spawning in [`crate::process`].

use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::header;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

mod binder;
pub mod client;
mod config;
mod error;
mod restore;
mod server;
mod stats;
mod supervise;
mod wal;

pub use binder::CellBinder;
pub use client::{
    valid_node_name, BackupOutcome, BootstrapSpec, BootstrapTarget, CellClient, CellReport,
    ClientError, NodePorts, NodeSpec, NodeStats, NodeStatus, RestoreStatus, WalPosition, WalSwitch,
};
pub use config::{CellConfig, MajorBin, PostgresqlConfig, TOKEN_ENV};
use config::{SOCKET_NAME_MAX, SOCKET_PATH_MAX};
pub use error::Error;
use error::{io_err, pg_error};
use supervise::kill_postgres;

use crate::binder::RoleRequest;
use crate::patroni::bootstrap::{RESTORE_BOOTSTRAP_SCRIPT, RESTORE_POST_BOOTSTRAP_SCRIPT};
pub use crate::patroni::DcsTiming;
use crate::patroni::{
    NodeConfig, REPLICA_FETCH_SCRIPT, RESTAPI_USER, ROLE_CHANGE_SCRIPT, SUPERUSER,
};
use crate::process::{self, Signal};
// Re-exported for the test harness, which names it here (its tokens are secrets).
pub use crate::secrets::Secret;

/// What `node.json` holds.
#[derive(Clone, Serialize, Deserialize)]
struct NodeRecord {
    spec: NodeSpec,
    ports: NodePorts,
    restapi_password: Secret,
}

// ---------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Runtime {
    pid: Option<u32>,
    restarts: u32,
}

struct Node {
    name: String,
    dir: PathBuf,
    record: Mutex<NodeRecord>,
    runtime: Arc<Mutex<Runtime>>,
    stop: watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Node {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn record(&self) -> NodeRecord {
        self.record.lock().expect("node lock").clone()
    }

    async fn stop(&self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
        kill_postgres(&self.data_dir()).await;
    }
}

struct Agent {
    config: CellConfig,
    token: Secret,
    uid: u32,
    gid: u32,
    /// This agent's OS user, which may act as the nodes' superuser over their socket.
    agent_user: String,
    nodes: Mutex<BTreeMap<String, Arc<Node>>>,
    /// Serialises creations, updates and removals.
    ops: tokio::sync::Mutex<()>,
    http: reqwest::Client,
}

/// The user and group ids of OS user `user`.
fn user_ids(user: &str) -> Result<(u32, u32), Error> {
    process::user_ids(user)
        .map_err(io_err("cannot look up OS user", Path::new(user)))?
        .ok_or_else(|| Error::NoUser(user.to_string()))
}

fn write_file(
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("cannot create", &tmp))?;
        f.write_all(content).map_err(io_err("cannot write", &tmp))?;
        f.sync_all().map_err(io_err("cannot sync", &tmp))?;
    }
    if let Some((u, g)) = owner {
        std::os::unix::fs::chown(&tmp, Some(u), Some(g)).map_err(io_err("cannot chown", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err("cannot rename", path))
}

impl Agent {
    fn owner(&self) -> Option<(u32, u32)> {
        Some((self.uid, self.gid))
    }

    fn node(&self, name: &str) -> Result<Arc<Node>, Error> {
        self.nodes
            .lock()
            .expect("nodes lock")
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(name.to_string()))
    }

    fn node_config(&self, name: &str, dir: &Path, rec: &NodeRecord) -> Result<NodeConfig, Error> {
        let s = &rec.spec;
        let pg_bin_dir = self
            .config
            .bin_dir(s.major)
            .map_err(|e| Error::Invalid(format!("node {name}: {e}")))?
            .to_path_buf();
        Ok(NodeConfig {
            scope: s.scope().to_string(),
            namespace: s.namespace.clone(),
            node_name: name.to_string(),
            etcd_hosts: s.etcd_hosts.clone(),
            etcd_tls: s.etcd_tls.clone(),
            etcd_credentials: s.etcd_credentials.clone(),
            host: s.host.clone(),
            peer_hosts: s.peer_hosts.clone(),
            pg_port: rec.ports.pg_port,
            api_port: rec.ports.api_port,
            node_dir: dir.to_path_buf(),
            socket_dir: self.config.socket_dir(),
            pg_bin_dir,
            walarchive: s.walarchive.clone(),
            repository: s.repository.clone(),
            archive_timeout: s.archive_timeout,
            synchronous: s.synchronous,
            synchronous_commit: s.synchronous_commit.clone(),
            timing: s.timing,
            wal_segsize_mb: s.wal_segsize_mb,
            superuser_password: s.superuser_password.clone(),
            replication_password: s.replication_password.clone(),
            rewind_password: s.rewind_password.clone(),
            ident_users: vec![self.config.user.clone(), self.agent_user.clone()],
            restapi_password: rec.restapi_password.clone(),
            bootstrap: s.bootstrap.clone(),
        })
    }

    /// `GET /v1/cell`: the majors, and the Patroni version (asked once).
    fn report(&self) -> CellReport {
        static PATRONI: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let patroni = PATRONI
            .get_or_init(|| {
                let out = std::process::Command::new(&self.config.patroni)
                    .arg("--version")
                    .stdin(std::process::Stdio::null())
                    .output()
                    .ok()?;
                out.status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
            })
            .clone();
        let nodes: Vec<NodePorts> = self
            .nodes
            .lock()
            .expect("nodes lock")
            .values()
            .map(|n| n.record().ports)
            .collect();
        CellReport {
            majors: self
                .config
                .majors
                .iter()
                .map(|(m, b)| (m.to_string(), b.version.clone()))
                .collect(),
            unnamed_major: self.config.unnamed_major,
            patroni,
            nodes: Some(nodes.len() as u32),
            free_ports: self.config.ports.map(|[min, max]| {
                let held = nodes
                    .iter()
                    .flat_map(|p| [p.pg_port, p.api_port])
                    .filter(|p| (min..=max).contains(p))
                    .count() as u32;
                (u32::from(max - min) + 1).saturating_sub(held)
            }),
        }
    }

    /// Writes node.json, patroni.yml, the replica-fetch script, the role-change callback and,
    /// for a node bootstrapped from an archive, the bootstrap scripts.
    fn write_node_files(&self, name: &str, dir: &Path, rec: &NodeRecord) -> Result<(), Error> {
        let cfg = self.node_config(name, dir, rec)?;
        let unquotable =
            |e: walarchive::shell::QuoteError| Error::Invalid(format!("node {name}: {e}"));
        let json = serde_json::to_vec_pretty(rec).expect("node records serialize");
        write_file(&dir.join("node.json"), &json, 0o600, None)?;
        // Read (and the scripts run) by Patroni, as the node's OS user.
        let mut files = vec![
            ("patroni.yml", cfg.render().map_err(unquotable)?, 0o600),
            (
                REPLICA_FETCH_SCRIPT,
                cfg.replica_fetch_script().map_err(unquotable)?,
                0o700,
            ),
            (
                ROLE_CHANGE_SCRIPT,
                cfg.role_change_script().map_err(unquotable)?,
                0o700,
            ),
        ];
        if let (Some(boot), Some(post)) = (
            cfg.restore_bootstrap_script(),
            cfg.restore_post_bootstrap_script(),
        ) {
            files.push((RESTORE_BOOTSTRAP_SCRIPT, boot.map_err(unquotable)?, 0o700));
            files.push((
                RESTORE_POST_BOOTSTRAP_SCRIPT,
                post.map_err(unquotable)?,
                0o700,
            ));
        }
        for (file, text, mode) in files {
            write_file(&dir.join(file), text.as_bytes(), mode, self.owner())?;
        }
        Ok(())
    }

    /// Two free ports not used by another node of this cell.
    fn allocate_ports(&self) -> Result<NodePorts, Error> {
        let used: Vec<u16> = self
            .nodes
            .lock()
            .expect("nodes lock")
            .values()
            .flat_map(|n| {
                let p = n.record().ports;
                [p.pg_port, p.api_port]
            })
            .collect();
        let mut got = Vec::new();
        let mut listeners = Vec::new();
        if let Some([min, max]) = self.config.ports {
            // From a random point of the range, the first ports no node of this cell has
            // and nothing listens on now.
            let span = u32::from(max - min) + 1;
            let mut r = [0u8; 4];
            getrandom::fill(&mut r).expect("the OS random number generator");
            let start = u32::from_le_bytes(r) % span;
            for i in 0..span {
                let port = (u32::from(min) + (start + i) % span) as u16;
                if used.contains(&port) {
                    continue;
                }
                if let Ok(l) = std::net::TcpListener::bind(("0.0.0.0", port)) {
                    got.push(port);
                    listeners.push(l);
                    if got.len() == 2 {
                        break;
                    }
                }
            }
            if got.len() < 2 {
                return Err(Error::Invalid(format!(
                    "no two free ports left in the cell's range {min}-{max}"
                )));
            }
        }
        while got.len() < 2 {
            let l = std::net::TcpListener::bind("0.0.0.0:0")
                .map_err(io_err("cannot allocate a port", Path::new("0.0.0.0:0")))?;
            let port = l
                .local_addr()
                .map_err(io_err("cannot allocate a port", Path::new("")))?
                .port();
            if !used.contains(&port) && !got.contains(&port) {
                got.push(port);
            }
            listeners.push(l);
        }
        Ok(NodePorts {
            pg_port: got[0],
            api_port: got[1],
        })
    }

    /// Re-adopts the nodes found in data_root.
    fn adopt(self: &Arc<Self>) -> Result<(), Error> {
        let root = &self.config.data_root;
        let entries = std::fs::read_dir(root).map_err(io_err("cannot read", root))?;
        for e in entries.flatten() {
            let dir = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let file = dir.join("node.json");
            if !valid_node_name(&name) || !file.is_file() {
                continue;
            }
            let text = std::fs::read(&file).map_err(io_err("cannot read", &file))?;
            let rec: NodeRecord =
                serde_json::from_slice(&text).map_err(|source| Error::Decode {
                    what: file.display().to_string(),
                    source,
                })?;
            // A Patroni left over from a previous agent would fight the new one.
            if let Ok(p) = std::fs::read_to_string(dir.join("patroni.pid")) {
                if let Ok(pid) = p.trim().parse::<u32>() {
                    if process::comm(pid).as_deref() == Some("patroni") {
                        warn!(
                            node = name,
                            pid, "killing a Patroni left by a previous agent"
                        );
                        process::signal(pid, Signal::SIGKILL);
                    }
                }
            }
            self.write_node_files(&name, &dir, &rec)?;
            info!(node = name, "re-adopting node");
            let node = self.insert_node(&name, dir, rec);
            self.start_supervisor(&node);
        }
        Ok(())
    }

    fn insert_node(&self, name: &str, dir: PathBuf, rec: NodeRecord) -> Arc<Node> {
        let (stop, _) = watch::channel(false);
        let node = Arc::new(Node {
            name: name.to_string(),
            dir,
            record: Mutex::new(rec),
            runtime: Arc::new(Mutex::new(Runtime::default())),
            stop,
            task: tokio::sync::Mutex::new(None),
        });
        self.nodes
            .lock()
            .expect("nodes lock")
            .insert(name.to_string(), node.clone());
        node
    }

    async fn put_node(self: &Arc<Self>, name: &str, spec: NodeSpec) -> Result<NodePorts, Error> {
        if !valid_node_name(name) {
            return Err(Error::Invalid(format!("invalid node name {name:?}")));
        }
        spec.validate().map_err(Error::Invalid)?;
        self.config
            .bin_dir(spec.major)
            .map_err(|e| Error::Invalid(format!("node {name}: {e}")))?;
        let _guard = self.ops.lock().await;
        if let Ok(node) = self.node(name) {
            let old = node.record();
            if old.spec.instance_id != spec.instance_id {
                return Err(Error::Invalid(format!(
                    "node {name} belongs to another instance"
                )));
            }
            if old.spec == spec {
                return Ok(old.ports);
            }
            if self.config.major(old.spec.major) != self.config.major(spec.major) {
                return Err(Error::Invalid(format!(
                    "node {name} runs PostgreSQL {}: a node's major cannot change",
                    self.config.major(old.spec.major)
                )));
            }
            let rec = NodeRecord {
                spec: spec.clone(),
                ..old.clone()
            };
            self.write_node_files(name, &node.dir, &rec)?;
            *node.record.lock().expect("node lock") = rec.clone();
            info!(node = name, "node spec changed");
            if old.spec.walarchive_env != spec.walarchive_env {
                // Patroni's environment only changes with a new process.
                node.stop().await;
                let (stop, _) = watch::channel(false);
                let fresh = Arc::new(Node {
                    name: name.to_string(),
                    dir: node.dir.clone(),
                    record: Mutex::new(rec.clone()),
                    runtime: node.runtime.clone(),
                    stop,
                    task: tokio::sync::Mutex::new(None),
                });
                self.nodes
                    .lock()
                    .expect("nodes lock")
                    .insert(name.to_string(), fresh.clone());
                self.start_supervisor(&fresh);
            } else {
                if let Some(pid) = node.runtime.lock().expect("runtime lock").pid {
                    process::signal(pid, Signal::SIGHUP);
                }
                if dynamic_changed(&old.spec, &spec) {
                    self.patch_dynamic(&rec).await?;
                }
            }
            return Ok(rec.ports);
        }
        let dir = self.config.data_root.join(name);
        std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("cannot chmod", &dir))?;
        std::os::unix::fs::chown(&dir, Some(self.uid), Some(self.gid))
            .map_err(io_err("cannot chown", &dir))?;
        let rec = NodeRecord {
            spec,
            ports: self.allocate_ports()?,
            restapi_password: Secret::generate(),
        };
        self.write_node_files(name, &dir, &rec)?;
        info!(
            node = name,
            pg_port = rec.ports.pg_port,
            api_port = rec.ports.api_port,
            "node created"
        );
        let ports = rec.ports;
        let node = self.insert_node(name, dir, rec);
        self.start_supervisor(&node);
        Ok(ports)
    }

    /// Applies changed cluster-wide settings through Patroni's `PATCH /config`.
    async fn patch_dynamic(&self, rec: &NodeRecord) -> Result<(), Error> {
        let t = &rec.spec.timing;
        let body = serde_json::json!({
            "ttl": t.ttl,
            "loop_wait": t.loop_wait,
            "retry_timeout": t.retry_timeout,
            "maximum_lag_on_failover": t.maximum_lag_on_failover,
            "synchronous_mode": rec.spec.synchronous,
            "postgresql": {"parameters": {"archive_timeout": rec.spec.archive_timeout}},
        });
        let url = format!("http://127.0.0.1:{}/config", rec.ports.api_port);
        let resp = self
            .http
            .patch(&url)
            .basic_auth(RESTAPI_USER, Some(rec.restapi_password.expose()))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|source| Error::Http {
                url: url.clone(),
                source,
            })?;
        if !resp.status().is_success() {
            return Err(Error::Status {
                status: resp.status().as_u16(),
                message: format!("Patroni refused PATCH {url}"),
            });
        }
        Ok(())
    }

    /// Asks node `name` (the leader) for a Patroni switchover to `candidate` (`POST
    /// /switchover` with Patroni's REST credentials, which only this agent holds); returns
    /// once Patroni accepted it (the new leader may still be starting).
    async fn switchover(&self, name: &str, candidate: &str) -> Result<(), Error> {
        if !valid_node_name(candidate) {
            return Err(Error::Invalid(format!("candidate {candidate:?}")));
        }
        let node = self.node(name)?;
        let rec = node.record();
        let url = format!("http://127.0.0.1:{}/switchover", rec.ports.api_port);
        let resp = self
            .http
            .post(&url)
            .basic_auth(RESTAPI_USER, Some(rec.restapi_password.expose()))
            .header(header::CONTENT_TYPE, "application/json")
            .body(serde_json::json!({"leader": name, "candidate": candidate}).to_string())
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .map_err(|source| Error::Http {
                url: url.clone(),
                source,
            })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(Error::Status {
                status: status.as_u16(),
                message: format!(
                    "Patroni refused the switchover to {candidate}: {}",
                    text.trim()
                ),
            });
        }
        info!(node = name, candidate, "switchover: {}", text.trim());
        Ok(())
    }

    async fn delete_node(&self, name: &str) -> Result<(), Error> {
        let _guard = self.ops.lock().await;
        let node = self.node(name)?;
        node.stop().await;
        self.nodes.lock().expect("nodes lock").remove(name);
        std::fs::remove_dir_all(&node.dir).map_err(io_err("cannot remove", &node.dir))?;
        info!(node = name, "node removed");
        Ok(())
    }

    async fn status(&self, node: &Node) -> NodeStatus {
        let rec = node.record();
        let (pid, restarts) = {
            let rt = node.runtime.lock().expect("runtime lock");
            (rt.pid, rt.restarts)
        };
        let patroni = if pid.is_some() {
            self.patroni_state(rec.ports.api_port).await
        } else {
            None
        };
        NodeStatus {
            name: node.name.clone(),
            instance_id: rec.spec.instance_id.clone(),
            running: pid.is_some(),
            pid,
            restarts,
            ports: rec.ports,
            patroni,
            restore: rec
                .spec
                .bootstrap
                .as_ref()
                .map(|_| restore::status(&node.dir)),
        }
    }

    async fn patroni_state(&self, api_port: u16) -> Option<serde_json::Value> {
        let resp = self
            .http
            .get(format!("http://127.0.0.1:{api_port}/patroni"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        // Patroni answers 503 with the same document when PostgreSQL is not running.
        let bytes = resp.bytes().await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    async fn backup(&self, name: &str) -> Result<BackupOutcome, Error> {
        let node = self.node(name)?;
        let rec = node.record();
        let started = Instant::now();
        // Over the socket: the superuser is not reachable over the network.
        let conn = format!(
            "host={} port={} user={SUPERUSER} dbname=postgres",
            self.config.socket_dir().display(),
            rec.ports.pg_port
        );
        let mut cmd = self.walarchive_command(&node, &rec);
        cmd.arg("backup-push")
            .arg("--pgdata")
            .arg(node.data_dir())
            .arg("--pg-conn")
            .arg(&conn)
            .arg("--json");
        info!(node = name, "backup-push started");
        let out = cmd.output().await.map_err(|source| Error::Spawn {
            program: rec.spec.walarchive.display().to_string(),
            source,
        })?;
        if !out.status.success() {
            return Err(Error::Backup {
                node: name.to_string(),
                code: out.status.code(),
                stderr: stderr_tail(&out.stderr),
            });
        }
        let summary = serde_json::from_slice(&out.stdout).map_err(|source| Error::Decode {
            what: "walarchive backup-push --json output".into(),
            source,
        })?;
        let seconds = started.elapsed().as_secs_f64();
        info!(node = name, seconds, "backup-push done");
        Ok(BackupOutcome { summary, seconds })
    }

    /// `walarchive --repo <the node's repository>` as the node's OS user, in its directory,
    /// with its walarchive environment only.
    fn walarchive_command(&self, node: &Node, rec: &NodeRecord) -> tokio::process::Command {
        let mut std_cmd = self.node_command(&rec.spec.walarchive, node, rec);
        std_cmd.arg("--repo").arg(&rec.spec.repository);
        let mut cmd = tokio::process::Command::from(std_cmd);
        cmd.kill_on_drop(true);
        cmd
    }

    /// `program` as the node's OS user, in its directory, with a clean environment (a fixed
    /// `PATH`, `HOME` the node's directory) plus its walarchive environment, stdin closed:
    /// how every process of a node starts (walarchive, Patroni).
    fn node_command(&self, program: &Path, node: &Node, rec: &NodeRecord) -> std::process::Command {
        let mut cmd = std::process::Command::new(program);
        cmd.current_dir(&node.dir)
            .uid(self.uid)
            .gid(self.gid)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &node.dir)
            .envs(rec.spec.walarchive_env.iter().map(|(k, v)| (k, v.expose())))
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// A superuser session on node `name`'s PostgreSQL, database `db`, over its Unix socket
    /// (peer authentication as this agent's OS user).
    async fn local_superuser(&self, name: &str, db: &str) -> Result<tokio_postgres::Client, Error> {
        let node = self.node(name)?;
        let rec = node.record();
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(self.config.socket_dir())
            .port(rec.ports.pg_port)
            .user(SUPERUSER)
            .dbname(db)
            .application_name("walarchive-cell")
            .connect_timeout(Duration::from_secs(10));
        let (client, connection) = cfg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| pg_error(name, format!("connecting to node {name}"), &e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Creates or resets a binding's role on node `name`, which must be the leader.
    async fn put_role(&self, name: &str, role: &str, req: RoleRequest) -> Result<(), Error> {
        if !crate::binder::valid_role_name(role) {
            return Err(Error::Invalid(format!("invalid role name {role:?}")));
        }
        req.validate().map_err(Error::Invalid)?;
        let admin = self.local_superuser(name, "postgres").await?;
        crate::binder::create_role(&admin, role, &req)
            .await
            .map_err(|e| pg_error(name, e.to_string(), &e))?;
        info!(node = name, role, "binding role ready");
        Ok(())
    }

    /// Drops a binding's role on node `name` (nothing when it does not exist).
    async fn delete_role(&self, name: &str, role: &str, group: &str) -> Result<(), Error> {
        if !crate::binder::valid_role_name(role) || !crate::binder::valid_object_name(group) {
            return Err(Error::Invalid(format!(
                "invalid role names {role:?}, {group:?}"
            )));
        }
        let admin = self.local_superuser(name, "postgres").await?;
        crate::binder::drop_role(&admin, group, role, |db| async move {
            self.local_superuser(name, &db)
                .await
                .map_err(|e| crate::api::BindError::new(e.to_string()))
        })
        .await
        .map_err(|e| pg_error(name, e.to_string(), &e))?;
        info!(node = name, role, "binding role dropped");
        Ok(())
    }

    async fn shutdown(&self) {
        let nodes: Vec<Arc<Node>> = self
            .nodes
            .lock()
            .expect("nodes lock")
            .values()
            .cloned()
            .collect();
        futures::future::join_all(nodes.iter().map(|n| n.stop())).await;
    }
}

/// The last 10 lines of a command's stderr.
fn stderr_tail(stderr: &[u8]) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    tail.join("\n")
}

fn dynamic_changed(a: &NodeSpec, b: &NodeSpec) -> bool {
    a.timing != b.timing || a.synchronous != b.synchronous || a.archive_timeout != b.archive_timeout
}

/// Runs the cell agent until `shutdown` completes, then stops every node's Patroni (which
/// stops its PostgreSQL) and returns. Nodes found in `data_root` are restarted first.
pub async fn run(
    config: CellConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let token = config.token()?;
    let (uid, gid) = user_ids(&config.user)?;
    let euid = process::effective_uid();
    let agent_user = process::user_name(euid)
        .map_err(io_err(
            "cannot look up OS user",
            Path::new("(this process's)"),
        ))?
        .ok_or_else(|| Error::NoUser(format!("uid {euid}")))?;
    let root = config.data_root.clone();
    std::fs::create_dir_all(&root).map_err(io_err("cannot create", &root))?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("cannot chmod", &root))?;
    let sockets = config.socket_dir();
    if sockets.as_os_str().len() + SOCKET_NAME_MAX > SOCKET_PATH_MAX {
        return Err(Error::Config {
            path: sockets,
            message: format!(
                "PostgreSQL's socket paths in this directory would be longer than {SOCKET_PATH_MAX} bytes: set a shorter socket_dir in the cell configuration"
            ),
        });
    }
    std::fs::create_dir_all(&sockets).map_err(io_err("cannot create", &sockets))?;
    std::os::unix::fs::chown(&sockets, Some(uid), Some(gid))
        .map_err(io_err("cannot chown", &sockets))?;
    std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err("cannot chmod", &sockets))?;
    let tls = match &config.tls {
        Some(files) => Some(crate::tls::server_config(files, true)?),
        None => None,
    };
    process::start_watchdog(&root)
        .await
        .map_err(|source| Error::Spawn {
            program: "sh (watchdog)".into(),
            source,
        })?;
    let listener = crate::tls::Incoming::bind(config.listen, tls)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|source| Error::Http {
            url: String::new(),
            source,
        })?;
    let agent = Arc::new(Agent {
        config,
        token,
        uid,
        gid,
        agent_user,
        nodes: Mutex::new(BTreeMap::new()),
        ops: tokio::sync::Mutex::new(()),
        http,
    });
    agent.adopt()?;
    let report = agent.report();
    info!(addr = %agent.config.listen, data_root = %root.display(),
          majors = ?report.majors, patroni = ?report.patroni, "cell agent listening");
    let patroni_major = report
        .patroni
        .as_deref()
        .and_then(|v| v.strip_prefix("patroni "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    if patroni_major.is_some_and(|p| p < 4) && agent.config.majors.keys().any(|m| *m >= 17) {
        warn!(patroni = ?report.patroni,
              "this Patroni does not know PostgreSQL 17 and 18: their nodes need Patroni 4 (`patroni` in the cell configuration)");
    }
    let (stopped_tx, stopped_rx) = oneshot::channel::<()>();
    let serve =
        axum::serve(listener, server::router(agent.clone())).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stopped_tx.send(());
        });
    let server = tokio::spawn(async move { serve.await });
    let _ = stopped_rx.await;
    info!("cell agent stopping its nodes");
    agent.shutdown().await;
    server.abort();
    Ok(())
}

/// Reads `config_path` and runs the agent until SIGTERM or SIGINT (what
/// `walarchive-broker cell --config FILE` does).
pub async fn main(config_path: &Path) -> Result<(), Error> {
    let config = CellConfig::load(config_path)?;
    run(config, async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    })
    .await
}
