//! HAProxy routing: one stable port per instance that always leads to its current leader,
//! and a second one that spreads read-only sessions over its hot standbys.
//!
//! Applications get one address per instance and must keep it across failovers. HAProxy
//! health-checks every node's Patroni REST API with `GET /primary`, which answers 200 only on
//! the leader (Patroni 3.0.2 calls it `master` internally and still answers 200), so the
//! listen block sends connections to whichever node is the leader now. A node marked down has
//! its sessions shut (`on-marked-down shutdown-sessions`): clients of a demoted or dead leader
//! reconnect instead of hanging. The read-only port's block checks `GET /replica` instead,
//! and falls back to the leader while no replica is healthy ([`render_read_only`]).
//!
//! HAProxy runs in master-worker mode; a changed configuration is validated (`haproxy -c`)
//! before it replaces the old one, and the master is told to reload with SIGUSR2. The old
//! worker keeps serving its established connections until they end, so changing one
//! instance's routes does not cut the others' connections. An update is done only once the
//! master has forked a worker of the new configuration: the master drops a SIGUSR2 that
//! arrives while it is still reloading, so signals are never sent closer than that, and one
//! lost all the same is sent again by the next update ([`Haproxy::apply`]).
//!
//! The router is what applications depend on at every moment; the broker is only needed
//! when instances change. So, unless told otherwise ([`RouterOptions::outlive`]), HAProxy
//! runs in a process group of its own and keeps routing when the broker stops, crashes or
//! is upgraded; the next broker finds it through its pid file (`haproxy.pid`, checked
//! against `/proc/PID/cmdline`) and reloads it instead of starting a second one, which could
//! not bind the same ports.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::process::{self, Signal};

/// Errors of the router.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// HAProxy could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `haproxy -c` rejected a configuration.
    #[error("HAProxy rejects the configuration: {0}")]
    Invalid(String),
    /// HAProxy exited.
    #[error("HAProxy exited: {0}")]
    Exited(String),
    /// No worker of the new configuration appeared after the reload signal; the next
    /// [`Haproxy::apply`] signals again.
    #[error("HAProxy (master {pid}) started no worker of the new configuration within {} s of SIGUSR2", RELOAD_WAIT.as_secs())]
    NotReloaded {
        /// The master's PID.
        pid: u32,
    },
}

/// How long [`Haproxy::apply`] waits for HAProxy's master to fork a worker of a new
/// configuration.
const RELOAD_WAIT: Duration = Duration::from_secs(15);

/// One node a route can lead to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// Server name in HAProxy (the node name).
    pub name: String,
    /// The node's host.
    pub host: String,
    /// Its PostgreSQL port.
    pub pg_port: u16,
    /// Its Patroni REST API port.
    pub api_port: u16,
}

/// One instance's route: a port leading to the instance's leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The instance's name ([`crate::names::path_name`]: unique, made of `[A-Za-z0-9_-]`),
    /// which names its `listen` block.
    pub name: String,
    /// The port HAProxy listens on for this instance.
    pub port: u16,
    /// The port of its read-only route (hot standbys), once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_port: Option<u16>,
    /// The instance's nodes.
    pub backends: Vec<Backend>,
}

/// Settings common to every route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterOptions {
    /// Address HAProxy binds the instance ports to (e.g. `0.0.0.0`).
    pub bind_address: String,
    /// Client and server inactivity timeout.
    pub idle_timeout: Duration,
    /// HAProxy keeps running when this process ends, and is adopted by the next one. When
    /// false it is tied to this process (killed with it: single-machine mode, tests).
    pub outlive: bool,
    /// Address HAProxy connects to the nodes from (`source`), when the router shares a
    /// machine with nodes: the nodes accept their replication role only from the instance's
    /// other nodes' addresses, and must not take the router for one.
    pub source: Option<String>,
    /// The read-only routes fall back to the primary while no replica is healthy (else they
    /// refuse connections then).
    pub read_only_fallback: bool,
    /// Replicas further behind than this many bytes get no read-only connections
    /// (Patroni's `GET /replica?lag=`); 0: no limit.
    pub read_only_max_lag: u64,
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            bind_address: "0.0.0.0".into(),
            idle_timeout: Duration::from_secs(3600),
            outlive: false,
            source: None,
            read_only_fallback: true,
            read_only_max_lag: 16 << 20,
        }
    }
}

/// A name HAProxy accepts for a proxy or server.
fn haproxy_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Renders the HAProxy configuration for `routes` (sorted by instance for stable output).
pub fn render(routes: &[Route], opts: &RouterOptions) -> String {
    let idle = opts.idle_timeout.as_millis();
    let mut out = format!(
        "# Written by walarchive-broker; changes are overwritten.\n\
         global\n    master-worker\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client {idle}ms\n    \
         timeout server {idle}ms\n    timeout check 2s\n"
    );
    if let Some(src) = &opts.source {
        let _ = writeln!(out, "    source {src}");
    }
    out.push('\n');
    let mut routes: Vec<&Route> = routes.iter().collect();
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    for r in routes {
        let name = haproxy_name(&r.name);
        let _ = write!(
            out,
            "listen pg_{name}\n    bind {bind}:{port}\n    option httpchk GET /primary\n    \
             http-check expect status 200\n    \
             default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions\n",
            bind = opts.bind_address,
            port = r.port,
        );
        write_checked_servers(&mut out, &r.backends);
        out.push('\n');
        if let Some(ro) = r.read_only_port {
            render_read_only(&mut out, r, &name, ro, opts);
        }
    }
    out
}

/// The read-only `listen` block of route `r` (named `pgro_<name>`), on port `ro`.
///
/// Every node is checked with Patroni's `GET /replica` (200 on a running replica, within
/// `lag` of the leader when a limit is set, and not tagged `noloadbalance`). `leastconn`:
/// PostgreSQL sessions are long and of uneven weight (pools hold them for hours), so the
/// replica with the fewest sessions gets the next one; round-robin would balance connection
/// attempts, not load. The fallback servers are the same nodes as `backup` servers that
/// `track` the primary block's ones (checked there with `/primary`): HAProxy uses a backup
/// server only while no other server is up, so the primary serves the read-only port only
/// while no replica is healthy, and no node is checked twice for it.
fn render_read_only(out: &mut String, r: &Route, name: &str, ro: u16, opts: &RouterOptions) {
    let check = if opts.read_only_max_lag > 0 {
        format!("/replica?lag={}", opts.read_only_max_lag)
    } else {
        "/replica".to_string()
    };
    let _ = write!(
        out,
        "listen pgro_{name}\n    bind {bind}:{ro}\n    balance leastconn\n    \
         option httpchk GET {check}\n    http-check expect status 200\n    \
         default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions\n",
        bind = opts.bind_address,
    );
    write_checked_servers(out, &r.backends);
    if opts.read_only_fallback {
        for b in &r.backends {
            let server = haproxy_name(&b.name);
            let _ = writeln!(
                out,
                "    server primary.{server} {}:{} backup track pg_{name}/{server}",
                b.host, b.pg_port
            );
        }
    }
    out.push('\n');
}

/// One `server` line per node, health-checked on its Patroni REST API port (the block's
/// `option httpchk` says which endpoint).
fn write_checked_servers(out: &mut String, backends: &[Backend]) {
    for b in backends {
        let _ = writeln!(
            out,
            "    server {} {}:{} check port {}",
            haproxy_name(&b.name),
            b.host,
            b.pg_port,
            b.api_port
        );
    }
}

/// Checks a configuration file with `haproxy -c`.
pub async fn validate(haproxy: &Path, config: &Path) -> Result<(), Error> {
    let out = tokio::process::Command::new(haproxy)
        .arg("-c")
        .arg("-q")
        .arg("-f")
        .arg(config)
        .output()
        .await
        .map_err(|source| Error::Spawn {
            program: haproxy.display().to_string(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Invalid(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// A running HAProxy (master-worker mode) serving [`Route`]s from a configuration file in
/// its own directory. Tied to this process, or outliving it ([`RouterOptions::outlive`]).
#[derive(Debug)]
pub struct Haproxy {
    bin: PathBuf,
    dir: PathBuf,
    opts: RouterOptions,
    current: Option<String>,
    pid: Option<u32>,
}

impl Haproxy {
    /// A manager for HAProxy `bin` keeping its files (`haproxy.cfg`, `haproxy.log`) in `dir`.
    /// HAProxy starts with the first [`Haproxy::apply`].
    pub fn new(bin: impl Into<PathBuf>, dir: impl Into<PathBuf>, opts: RouterOptions) -> Haproxy {
        Haproxy {
            bin: bin.into(),
            dir: dir.into(),
            opts,
            current: None,
            pid: None,
        }
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("haproxy.cfg")
    }

    /// HAProxy's pid file (the master's PID, written by HAProxy itself).
    pub fn pid_path(&self) -> PathBuf {
        self.dir.join("haproxy.pid")
    }

    /// The PID of a HAProxy master left running by an earlier process for this
    /// configuration, if there is one.
    fn running_from_pid_file(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_path())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let config = self.config_path();
        let ours = args.first().is_some_and(|a| a.ends_with(b"haproxy"))
            && args
                .iter()
                .any(|a| *a == config.as_os_str().as_encoded_bytes());
        (ours && process::alive(pid)).then_some(pid)
    }

    /// The master process's PID, once started.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Makes HAProxy serve exactly `routes`: writes and validates the configuration, then
    /// starts HAProxy or reloads it, and waits until a worker of that configuration runs.
    /// Returns `false` when nothing changed. After an error, the next call writes and
    /// signals again even if `routes` are the same.
    pub async fn apply(&mut self, routes: &[Route]) -> Result<bool, Error> {
        let text = render(routes, &self.opts);
        if self.current.as_deref() == Some(text.as_str()) && self.is_running() {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| Error::Io {
            what: "cannot create",
            path: self.dir.clone(),
            source,
        })?;
        let candidate = self.dir.join("haproxy.cfg.new");
        std::fs::write(&candidate, &text).map_err(|source| Error::Io {
            what: "cannot write",
            path: candidate.clone(),
            source,
        })?;
        validate(&self.bin, &candidate).await?;
        let path = self.config_path();
        std::fs::rename(&candidate, &path).map_err(|source| Error::Io {
            what: "cannot rename",
            path: path.clone(),
            source,
        })?;
        self.current = Some(text);
        if self.pid.is_none() {
            if let Some(pid) = self.running_from_pid_file() {
                info!(pid, "adopting the running HAProxy");
                self.pid = Some(pid);
            }
        }
        match self.pid.filter(|_| self.is_running()) {
            Some(pid) => {
                info!(pid, routes = routes.len(), "reloading HAProxy");
                let before = children(pid);
                process::signal(pid, Signal::SIGUSR2);
                if let Err(e) = self.new_worker(pid, &before).await {
                    // Not known to be served: the next apply writes it and signals again.
                    self.current = None;
                    return Err(e);
                }
            }
            None => {
                self.start().await?;
                let pid = self.pid.expect("started");
                if let Err(e) = self.new_worker(pid, &HashSet::new()).await {
                    self.current = None;
                    return Err(e);
                }
            }
        }
        Ok(true)
    }

    /// Waits until master `pid` has a worker that is not one of `before` (its workers when
    /// it was signalled): the master forks it only once it has read the configuration, so
    /// that configuration is served.
    ///
    /// Why wait: HAProxy's master drops a SIGUSR2 that arrives while it is still reloading
    /// for the previous one (seen with 2.6: of three reloads sent within milliseconds, the
    /// last one often never happens). Without the wait, a route written during a reload was
    /// never served, and since the file already held it, nothing signalled again. Waiting
    /// here (under the router's lock, as every update is) means no signal is sent during a
    /// reload; the short pause after the fork covers the master's return to its loop, and a
    /// signal lost all the same is sent again by the next apply ([`Error::NotReloaded`]).
    async fn new_worker(&self, pid: u32, before: &HashSet<u32>) -> Result<(), Error> {
        let deadline = std::time::Instant::now() + RELOAD_WAIT;
        loop {
            if !process::alive(pid) {
                return Err(Error::Exited(format!(
                    "master {pid} exited while loading its configuration (see {})",
                    self.dir.join("haproxy.log").display()
                )));
            }
            if children(pid).iter().any(|c| !before.contains(c)) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                warn!(
                    pid,
                    "HAProxy did not reload; signalling again at the next update"
                );
                return Err(Error::NotReloaded { pid });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn start(&mut self) -> Result<(), Error> {
        let log_path = self.dir.join("haproxy.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| Error::Io {
                what: "cannot open",
                path: log_path.clone(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| Error::Io {
            what: "cannot open",
            path: log_path.clone(),
            source,
        })?;
        let mut cmd = std::process::Command::new(&self.bin);
        cmd.arg("-W")
            .arg("-p")
            .arg(self.pid_path())
            .arg("-f")
            .arg(self.config_path())
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2);
        let spawned = if self.opts.outlive {
            use std::os::unix::process::CommandExt;
            // Its own process group: a Ctrl-C or SIGTERM to the broker's group spares it.
            cmd.process_group(0);
            cmd.spawn()
        } else {
            process::spawn_tied(cmd).await
        };
        let child = spawned.map_err(|source| Error::Spawn {
            program: self.bin.display().to_string(),
            source,
        })?;
        let pid = child.id();
        info!(pid, "HAProxy started");
        self.pid = Some(pid);
        // Reaped by a plain thread (a runtime being dropped waits for its blocking-pool
        // tasks, and this one only ends with HAProxy); `is_running` looks at /proc.
        std::thread::spawn(move || {
            let mut child = child;
            let status = child.wait();
            warn!(pid, "HAProxy master exited: {status:?}");
        });
        Ok(())
    }

    /// Whether the HAProxy master process is alive.
    pub fn is_running(&self) -> bool {
        self.pid.is_some_and(process::alive)
    }

    /// Lets go of HAProxy: stops it when it is tied to this process, leaves it routing
    /// (for the next broker to adopt) when it outlives it.
    pub async fn release(&mut self) {
        if self.opts.outlive {
            if let Some(pid) = self.pid.take() {
                info!(pid, "leaving HAProxy running for the next broker");
            }
        } else {
            self.stop().await;
        }
    }

    /// Stops HAProxy (SIGTERM to the master, which stops its workers).
    pub async fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            process::signal(pid, Signal::SIGTERM);
            for _ in 0..50 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The processes whose parent is `pid` (a HAProxy master's workers, old and new).
fn children(pid: u32) -> HashSet<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashSet::new();
    };
    dir.filter_map(|e| {
        let child: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        // After the command name: the state, then the parent's PID.
        let ppid: u32 = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == pid).then_some(child)
    })
    .collect()
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if self.opts.outlive {
            return;
        }
        if let Some(pid) = self.pid.take() {
            process::signal(pid, Signal::SIGTERM);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> Route {
        Route {
            name: "inst_1".into(),
            port: 6432,
            read_only_port: Some(6433),
            backends: vec![
                Backend {
                    name: "n1".into(),
                    host: "10.0.0.1".into(),
                    pg_port: 5432,
                    api_port: 8008,
                },
                Backend {
                    name: "n2".into(),
                    host: "10.0.0.2".into(),
                    pg_port: 5433,
                    api_port: 8009,
                },
            ],
        }
    }

    /// The text of the `listen` block named `name`.
    fn block<'a>(cfg: &'a str, name: &str) -> &'a str {
        let start = cfg
            .find(&format!("listen {name}\n"))
            .unwrap_or_else(|| panic!("no {name}: {cfg}"));
        let rest = &cfg[start..];
        &rest[..rest.find("\n\n").map_or(rest.len(), |i| i + 1)]
    }

    #[test]
    fn renders_a_listen_block_per_instance() {
        let cfg = render(&[route()], &RouterOptions::default());
        let primary = block(&cfg, "pg_inst_1");
        assert!(primary.contains("    bind 0.0.0.0:6432\n"), "{cfg}");
        assert!(primary.contains("option httpchk GET /primary"));
        assert!(
            primary.contains("    server n2 10.0.0.2:5433 check port 8009\n"),
            "{cfg}"
        );
        assert!(!primary.contains("backup"), "{cfg}");
    }

    #[test]
    fn read_only_block_checks_replicas_and_falls_back_to_the_primary() {
        let cfg = render(&[route()], &RouterOptions::default());
        let ro = block(&cfg, "pgro_inst_1");
        assert!(ro.contains("    bind 0.0.0.0:6433\n"), "{ro}");
        assert!(ro.contains("    balance leastconn\n"), "{ro}");
        assert!(
            ro.contains("    option httpchk GET /replica?lag=16777216\n"),
            "{ro}"
        );
        assert!(ro.contains("on-marked-down shutdown-sessions"), "{ro}");
        for (n, addr, api) in [("n1", "10.0.0.1:5432", 8008), ("n2", "10.0.0.2:5433", 8009)] {
            assert!(
                ro.contains(&format!("    server {n} {addr} check port {api}\n")),
                "{ro}"
            );
            // The fallback: the same node as a backup server following the primary block's
            // check of it (no check of its own).
            assert!(
                ro.contains(&format!(
                    "    server primary.{n} {addr} backup track pg_inst_1/{n}\n"
                )),
                "{ro}"
            );
        }
        assert_eq!(ro.matches(" check port ").count(), 2, "{ro}");
    }

    #[test]
    fn read_only_block_without_fallback_or_lag_limit() {
        let opts = RouterOptions {
            read_only_fallback: false,
            read_only_max_lag: 0,
            ..RouterOptions::default()
        };
        let cfg = render(&[route()], &opts);
        let ro = block(&cfg, "pgro_inst_1");
        assert!(ro.contains("    option httpchk GET /replica\n"), "{ro}");
        assert!(!ro.contains("backup"), "{ro}");
        assert!(!ro.contains("track"), "{ro}");
        // No read-only port (an instance the worker has not given one yet): no block.
        let cfg = render(
            &[Route {
                read_only_port: None,
                ..route()
            }],
            &opts,
        );
        assert!(!cfg.contains("pgro_"), "{cfg}");
    }

    /// HAProxy itself accepts both forms (the `track` across blocks in particular).
    #[tokio::test]
    async fn haproxy_accepts_the_read_only_blocks() {
        // Installed by scripts/setup, as for every router test.
        let haproxy = Path::new("/usr/sbin/haproxy");
        let dir = tempfile::tempdir().unwrap();
        for fallback in [true, false] {
            let opts = RouterOptions {
                bind_address: "127.0.0.1".into(),
                read_only_fallback: fallback,
                ..RouterOptions::default()
            };
            let path = dir.path().join("haproxy.cfg");
            std::fs::write(&path, render(&[route()], &opts)).unwrap();
            validate(haproxy, &path)
                .await
                .unwrap_or_else(|e| panic!("fallback {fallback}: {e}"));
        }
    }

    /// Whether something listens on 127.0.0.1:`port` (the running worker's configuration,
    /// not the file's).
    fn listening(port: u16) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }

    /// A port nothing listens on now.
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Updates in quick succession, as the worker's concurrent passes make them (a route
    /// added, removed, added again): HAProxy's master drops a SIGUSR2 that arrives while it
    /// is still reloading for the previous one, so an update sent then would never be
    /// served (with the file already saying it is). Every `apply` returns only once a worker
    /// of the new configuration runs; the last configuration is the one served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quick_updates_are_all_served() {
        let dir = tempfile::tempdir().unwrap();
        let opts = RouterOptions {
            bind_address: "127.0.0.1".into(),
            ..RouterOptions::default()
        };
        let mut h = Haproxy::new("/usr/sbin/haproxy", dir.path().join("router"), opts);
        let [a, a_ro, b, b_ro] = [(); 4].map(|()| free_port());
        let with = |name: &str, port: u16, ro: u16| Route {
            name: name.into(),
            port,
            read_only_port: Some(ro),
            backends: route().backends,
        };
        let one = [with("a", a, a_ro)];
        let both = [with("a", a, a_ro), with("b", b, b_ro)];
        h.apply(&one).await.unwrap();
        for round in 0..10 {
            h.apply(&both).await.unwrap();
            h.apply(&one).await.unwrap();
            h.apply(&both).await.unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !listening(b) && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(listening(b), "round {round}: b's port is not served");
            h.apply(&one).await.unwrap();
        }
        h.stop().await;
    }
}
